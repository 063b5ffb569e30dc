"""Planning for real TPU slices from this CPU box: libtpu compiles the real train step for a topology's
devices; memory, the micro-batch plan and its dependence on the chip's HBM come from those compiles."""

import pytest

from conftest import tiny_config
from jaxbatch import cli, config, memory, topology
from jaxbatch import run as run_lib
from jaxbatch.data import tasks
from jaxbatch.errors import ConfigError

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is not installed")

DECODER = ["model.preset=gpt-tiny", "model.num_layers=1", "model.vocab_size=256", "data.name=text", "data.seq_len=64"]


def test_chips_and_targets(monkeypatch):
    assert topology.chip_for_kind("TPU v5 lite").name == "TPU v5e"
    assert topology.chip_for_kind("TPU v5").name == "TPU v5p"
    assert topology.chip_for_kind("NVIDIA H100 80GB HBM3").peak_flops == 989e12
    assert topology.chip_for_kind("cpu") is None
    v5e = topology.target("v5e:4x4")
    assert len(v5e.devices) == 16 and v5e.device_memory == 16 * 2**30 and v5e.devices[0].platform == "tpu"
    v4 = topology.target("v4:2x2x2")  # 8 chips, each one (megacore) device
    assert (v4.chips, len(v4.devices), v4.device_memory) == (8, 8, 32 * 2**30)
    for bad in ("v5e", "v3:2x2", "v5e:4x4x4x4", "tpu-v5e-16"):
        with pytest.raises(ConfigError, match="--target"):
            topology.target(bad)
    monkeypatch.setitem(__import__("sys").modules, "libtpu", None)  # as if the tpu extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'jaxbatch\[tpu\]'"):
        topology.target("v5e:4x4")


@pytest.mark.parametrize("target, overrides", [
    # tiny BERT, DP over 16 chips
    ("v5e:4x4", ["model.preset=tiny", "model.num_layers=1", "train.batch_size=16", "mesh.data=-1"]),
    ("v4:2x2x2", [*DECODER, "train.batch_size=16", "mesh.fsdp=4", "mesh.data=2"]),  # a decoder, FSDP x DP
    ("2xv5e:2x2", [*DECODER, "train.batch_size=16", "mesh.fsdp=2", "mesh.data=4"]),  # two slices (multislice)
])
def test_plan_compiles_for_a_slice_on_this_cpu(capsys, target, overrides):
    assert cli.main(["plan", "--target", target, *overrides]) == 0
    out = capsys.readouterr().out
    assert "tpu devices" in out and "plan: train.accum_steps=1 (micro-batch 16)" in out, out
    assert ("tpu devices in 2 slices)" in out) == target.startswith("2x")
    slice_ = topology.target(target)
    assert f"of {memory.size(slice_.device_memory)} HBM" in out and "TFLOP per device per step" in out
    cfg = config.build(overrides)
    spec = run_lib.resolve(cfg, task=tasks.dataset_task(cfg.data))
    fixed = memory.state_bytes(spec, slice_.devices)
    assert f"params {memory.size(fixed.params)}," in out


def test_a_multislice_mesh_spans_the_slices_with_its_data_axis():
    """Devices of two v5e:2x2 slices (joined by the data-center network) laid out as MaxText's multislice: the data
    axis spans the slices (only the gradient all-reduce crosses them), fsdp and model stay within one; FSDP spans
    them when the data axis cannot (hybrid sharding), the model axis never; every device is used once."""
    import numpy as np

    from jaxbatch import mesh as mesh_lib

    two = topology.target("2xv5e:2x2")
    assert (two.chips, two.slices, len(two.devices), two.device_memory) == (8, 2, 8, 16 * 2**30)
    assert "8 x TPU v5e in 2 slices" in two.describe() and "slices" not in topology.target("v5e:2x2").describe()

    def slices(data, fsdp, model):
        mesh = mesh_lib.make_mesh(config.build([f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                                f"mesh.model={model}"]).mesh, two.devices)
        assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in two.devices)
        return np.vectorize(lambda d: d.slice_index)(mesh.devices)

    assert (slices(4, 2, 1) == (np.arange(4) // 2)[:, None, None]).all()  # data rows 0-1 on one slice, 2-3 on the other
    assert (slices(2, 1, 4) == np.arange(2)[:, None, None]).all()  # tensor parallel within each slice
    assert slices(1, 8, 1).reshape(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # FSDP across the slices
    with pytest.raises(ConfigError, match=r"span 2 TPU slices, and mesh.data \(or else mesh.fsdp\) must be a multiple "
                                          r"of 2"):
        slices(1, 1, 8)
    for bad in ("0xv5e:2x2", "00xv5e:2x2"):
        with pytest.raises(ConfigError, match=f"--target '{bad}'"):
            topology.target(bad)


def test_a_model_too_big_for_the_slice_is_reported_with_numbers(capsys):
    code = cli.main(["plan", "--target", "v5e:2x4", "model.preset=gpt2-1.5b", "model.vocab_size=50257",
                     "data.name=text", "train.batch_size=8", "data.seq_len=128", "mesh.data=-1"])
    out = capsys.readouterr().out
    assert code == 1 and "does not fit: parameters and optimizer state alone take" in out, out
    gib = float(out.split("alone take ")[1].split()[0])
    assert gib == pytest.approx(12 * 1.558e9 / 2**30, rel=0.01)  # 1.56B params x (4 + 8 bytes), replicated


def test_smaller_hbm_means_a_smaller_micro_batch():
    # 64 heads x 4096^2 attention scores: ~8 GiB of activations per example; micro-batches of 2 or 1 per chip
    spec = tiny_config("model.preset=gpt-tiny", "model.hidden_size=128", "model.num_heads=64", "model.num_layers=1",
                       "model.intermediate_size=512", "model.vocab_size=256", "model.max_position_embeddings=4096",
                       "data.name=text", "model.task=lm", "train.batch_size=8", "data.seq_len=4096",
                       "mesh.data=1", "mesh.fsdp=4")
    plans = {}
    for name in ("v5e:2x2", "v5p:2x2x1"):  # 16 GiB vs 95 GiB per chip
        target = topology.target(name)
        plans[name] = memory.plan_micro_batch(spec, int(0.9 * target.device_memory), target.devices, log=print)
    assert plans["v5p:2x2x1"].accum_steps == 1
    assert plans["v5e:2x2"].accum_steps == 2 and plans["v5e:2x2"].total <= 0.9 * 16 * 2**30


def test_compare_meshes_recommends_a_fitting_mesh(capsys):
    assert cli.main(["plan", "--target", "v5e:2x2", "--compare-meshes", "model.preset=tiny",
                     "model.num_layers=1", "train.batch_size=16"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "GiB/device" in line]
    assert {r.split()[0] for r in rows} == {"FSDP", "DP", "FSDP", "DP"} | {r.split()[0] for r in rows}
    assert len(rows) == 4 and all("fits" in r for r in rows), out  # FSDP, DP, DP 2 x FSDP, FSDP x TP 2
    chosen = out.split("recommended mesh: ")[1].splitlines()[0]
    data, fsdp, model = (int(chosen.split(f"mesh.{k}=")[1].split()[0].rstrip(")")) for k in ("data", "fsdp", "model"))
    assert data * fsdp * model == 4 and f"mesh data={data} x fsdp={fsdp} x model={model}" in out
    times = {r.split(":")[0].strip(): float(r.split("step")[1].split("ms")[0]) for r in rows}
    assert min(times, key=times.get).split()[0] == chosen.split()[0]  # the fastest by XLA's estimate


def test_slice_compiles_stay_out_of_the_persistent_cache(tmp_path):
    """libtpu's client-less compiler cannot read a cached executable back: a second `plan --target` would warn
    and compile anyway. Neither run writes the slice's step to the cache; a plan for this CPU's devices does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    # the cache on first, then every compile kept (the tiny step compiles in under the default 0.5 s); a local
    # compile before the plan, as in a notebook that trained first (jax decides once per process whether to cache)
    code = ("import jax, sys; from jaxbatch import cache, cli; cache.enable_compilation_cache(); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); jax.jit(lambda x: x + 1)(1.0); "
            "sys.exit(cli.main(sys.argv[1:]))")
    plan = ["plan", "model.preset=tiny", "model.num_layers=1", "train.batch_size=16", "train.memory_budget_gb=1"]

    def run(*args):
        env = {**os.environ, "JAXBATCH_CACHE": str(tmp_path)}
        return subprocess.run([sys.executable, "-c", code, *plan, *args], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).parents[1])

    for _ in range(2):
        out = run("--target", "v5e:2x2")
        assert out.returncode == 0 and "PjRtCompiler" not in out.stderr, out.stderr[-2000:]
    assert list(tmp_path.rglob("jit_train_step*")) == []
    assert run().returncode == 0  # the same plan on this process's CPU devices
    assert list(tmp_path.rglob("jit_train_step*"))
