"""The persistent compilation cache and the cached CPU peak (cache.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxbatch import cache, metrics

COMPILE_TWICE = """
import jax, numpy as np
import jax.monitoring
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
sys.path.insert(0, "tests")
from conftest import random_batch, run_steps, tiny_config
cfg = tiny_config("mesh.data=2", "train.batch_size=8")
state, history, run = run_steps(cfg, [random_batch(cfg, 0)], jax.devices()[:2])
print(json.dumps({"hits": len(hits), "dir": jax.config.jax_compilation_cache_dir, "loss": float(history[0]["loss"])}))
"""


def test_second_process_reads_the_train_step_from_the_cache(tmp_path):
    env = {**os.environ, "JAXBATCH_CACHE": str(tmp_path / "c")}
    script = "import json, sys\n" + COMPILE_TWICE
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True, cwd=Path(__file__).parents[1]).stdout.strip().splitlines()[-1])
            for _ in range(2)]
    folder = tmp_path / "c" / "xla" / f"jax-{__import__('jax').__version__}"
    assert runs[0]["dir"] == runs[1]["dir"] == str(folder)
    assert any(p.name.startswith("jit_train_step") for p in folder.iterdir())
    assert runs[0]["hits"] == 0 and runs[1]["hits"] >= 1
    assert runs[0]["loss"] == runs[1]["loss"]  # the cached program computes the same step


def test_the_cache_is_cut_back_to_its_bound_oldest_first(tmp_path):
    """JAX's compilation cache keeps every program forever: at start-up the oldest-written files (an old jax
    version's first) go until XLA_CACHE_BYTES is left."""
    xla = tmp_path / "xla"
    for i, (version, size) in enumerate([("jax-0.9", 400), ("jax-0.10.2", 300), ("jax-0.10.2", 200),
                                         ("jax-0.10.2", 100)]):
        path = xla / version / f"prog{i}-cache"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (1000 + i, 1000 + i))
    cache.prune(xla, 550)  # 1000 bytes: the old version's 400 go, then the oldest 300 of this one
    assert sorted(p.name for p in xla.rglob("*-cache")) == ["prog2-cache", "prog3-cache"]
    cache.prune(xla, 10_000)  # under the bound: nothing goes
    assert len(list(xla.rglob("*-cache"))) == 2
    subprocess.run([sys.executable, "-c", "from jaxbatch import cache\ncache.XLA_CACHE_BYTES = 150\n"
                    "cache.enable_compilation_cache()"], env={**os.environ, "JAXBATCH_CACHE": str(tmp_path)},
                   check=True, cwd=Path(__file__).parents[1])  # a run's start-up prunes
    assert [p.name for p in xla.rglob("*-cache")] == ["prog3-cache"]
    cache.prune(tmp_path / "missing", 0)  # no folder yet: nothing to do


def test_cache_off_or_user_dir_is_respected(monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    assert cache.root() is None
    monkeypatch.setenv("JAXBATCH_CACHE", "~/x")
    assert cache.root() == Path.home() / "x"


def test_peak_is_measured_once_per_machine_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    assert cache.cached_peak(lambda: 1.5e11) == (1.5e11, True)

    def again():
        raise AssertionError("measured twice")
    assert cache.cached_peak(again) == (1.5e11, False)
    stored = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(stored.values()) == [1.5e11]


def test_the_peak_is_kept_per_processor(tmp_path, monkeypatch):
    """A machine of the same host name with another CPU (a VM image on other hardware: this project's boxes are
    all 'vm') measures its own peak; the one stored for the first would show a false MFU."""
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    zen3, zen5 = "AuthenticAMD/25/1/AMD EPYC/0a1b2c3d", "AuthenticAMD/26/2/AMD EPYC/4e5f6a7b"
    monkeypatch.setattr(cache, "processor", lambda: zen3)
    assert cache.cached_peak(lambda: 1.4e11) == (1.4e11, True)
    monkeypatch.setattr(cache, "processor", lambda: zen5)
    assert cache.cached_peak(lambda: 3.7e11) == (3.7e11, True)
    monkeypatch.setattr(cache, "processor", lambda: zen3)
    assert cache.cached_peak(lambda: 0.0) == (1.4e11, False)
    monkeypatch.undo()
    if os.path.isfile("/proc/cpuinfo"):  # x86: vendor, family, model, name; Arm: implementer, part; the flags' digest
        *ids, flags = cache.processor().split("/")
        assert len(ids) >= 2 and all(ids) and len(flags) == 8


def test_matmul_peak_is_the_fastest_run(monkeypatch):
    """One slow (contended) timing must not lower the peak: the result is 2 n^3 / the shortest time."""
    ticks = iter([0.0, 1.0, 10.0, 10.5, 20.0, 22.0])  # three runs of n=64: 1.0 s, 0.5 s, 2.0 s
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(ticks))
    assert metrics.measure_matmul_flops(sizes=(64,), repeats=3) == pytest.approx(2 * 64**3 / 0.5)


def test_a_faster_rate_raises_the_stored_peak_and_a_slower_one_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    assert cache.cached_peak(lambda: 1.0e11) == (1.0e11, True)  # measured in a slow moment
    cache.raise_peak(0.5e11)
    assert cache.cached_peak(lambda: 0.0) == (1.0e11, False)
    cache.raise_peak(3.0e11)
    assert cache.cached_peak(lambda: 0.0) == (3.0e11, False)


def test_peaks_are_kept_per_dtype(tmp_path, monkeypatch):
    """A bf16 run's peak (measured with bf16 inputs) and fp32's are two numbers; fp32 keeps the key it had
    before peaks were kept per dtype, so an existing cache stays valid."""
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    assert cache.cached_peak(lambda: 1.0e11) == (1.0e11, True)
    assert cache.cached_peak(lambda: 3.0e11, "bfloat16") == (3.0e11, True)
    cache.raise_peak(5.0e11, "bfloat16")
    assert cache.cached_peak(lambda: 0.0, "float32") == (1.0e11, False)
    assert cache.cached_peak(lambda: 0.0, "bfloat16") == (5.0e11, False)
    keys = sorted(json.loads((tmp_path / "peak_flops.json").read_text()))
    assert keys[0] + "|bfloat16" == keys[1]


def test_the_training_peak_is_measured_in_the_compute_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    seen = []
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda dtype: seen.append(dtype) or 4.0e11)
    peak = metrics.peak_flops_per_device(0.0, jnp.bfloat16)
    assert seen == [jnp.bfloat16] and peak.dtype == "bfloat16" and "bfloat16 matmul" in peak.source
    assert peak.flops == pytest.approx(4.0e11 / jax.local_device_count())


def test_a_cache_folder_that_cannot_be_written_is_named_once_and_nothing_is_kept(tmp_path):
    """JAXBATCH_CACHE on a read-only or full disk (here: under a file): one warning line at start-up, programs
    compiled each time, not a JAX warning at every cache read."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    script = ("import jax\nfrom jaxbatch import cache\ncache.enable_compilation_cache()\n"
              "print(jax.config.jax_compilation_cache_dir)")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "JAXBATCH_CACHE": str(blocked / "cache")},
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "None", done
    assert done.stderr.count("warning: compiled programs are not kept:") == 1 and "cannot be written" in done.stderr
