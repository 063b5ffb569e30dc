import jax
import pytest

from conftest import tiny_config
from jaxbatch import config, memory


@pytest.fixture(scope="module")
def measured():
    cfg = tiny_config("train.batch_size=64", "data.seq_len=64", "mesh.data=4", "mesh.fsdp=2")
    return cfg, {k: memory.step_memory(cfg, k) for k in (1, 2, 4)}


def test_memory_shrinks_with_accumulation_and_params_are_sharded(measured):
    _, sizes = measured
    one, four = sizes[1], sizes[4]
    assert four.temp < 0.6 * one.temp and four.total < one.total
    n_params = 91_785  # the one-layer tiny BERT with a 9-label token head
    # fsdp=2 halves every embed-sharded tensor; 4-byte floats; Adam keeps two moments
    assert 4 * n_params / 2 <= one.params < 4 * n_params * 0.55  # only 1-D biases of TP axes stay whole
    assert one.optimizer == pytest.approx(2 * one.params, rel=0.01)


def test_planner_picks_smaller_micro_batch_for_smaller_budget(measured):
    cfg, sizes = measured
    lines = []
    big = memory.plan_micro_batch(cfg, sizes[1].total + 1, log=lines.append)
    assert (big.micro_batch, big.accum_steps) == (64, 1)
    small = memory.plan_micro_batch(cfg, sizes[2].total - 1, log=lines.append)
    assert small.accum_steps == 4 and small.micro_batch == 16
    assert any("too big" in line for line in lines)
    cfg = config.replace(cfg, train__batch_size=16)  # micro-batches 16 and 8 over 8 batch shards
    with pytest.raises(memory.DoesNotFit, match="parameters and optimizer state alone"):  # nothing compiled
        memory.plan_micro_batch(cfg, 1000, log=lines.append)
    fixed = memory.state_bytes(cfg)
    assert (fixed.params, fixed.optimizer) == (sizes[1].params, sizes[1].optimizer)
    count = len(lines)
    with pytest.raises(memory.DoesNotFit, match="no micro-batch of global batch 16 fits") as e:
        memory.plan_micro_batch(cfg, fixed.total + 1000, log=lines.append)
    assert len(lines) == count + 2 and e.value.smallest.accum_steps == 2  # k = 1, then the smallest micro-batch
    assert str(e.value).endswith("shard more (mesh.fsdp, mesh.model), recompute activations (model.remat=full), "
                                 "use precision.policy=bf16 or shorten data.seq_len")
    done = config.replace(cfg, model__remat="full", precision__policy="bf16")  # only what the spec does not do yet
    assert memory._remedies(done) == "shard more (mesh.fsdp, mesh.model) or shorten data.seq_len"


def test_cpu_devices_share_the_hosts_ram_as_their_budget():
    import os

    import jax

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory.device_budget(0) == int(0.9 * ram / jax.local_device_count())  # conftest: 8 CPU devices
    assert memory.device_budget(1.5) == int(1.5 * 2**30)


def test_vocab_tiling_keeps_a_language_models_logits_out_of_memory():
    """A vocabulary of 8192 at 8 x 128 tokens: 32 MiB of float32 logits, held with their gradient by the whole
    step; in 16 pieces only one piece's are, so the compiled step needs at least 40 MiB less scratch."""
    def step(tiles):
        cfg = config.build(["model.preset=gpt-tiny", "model.vocab_size=8192", "model.task=lm", "data.name=text",
                            "train.batch_size=8", "data.seq_len=128", "mesh.data=1", f"model.vocab_tiling={tiles}"])
        return memory.step_memory(cfg, 1, jax.devices()[:1])

    whole, tiled = step(1), step(16)
    assert whole.temp - tiled.temp > 40 * 2**20, (whole.describe(), tiled.describe())
    assert tiled.params == whole.params and tiled.optimizer == whole.optimizer


def test_compute_is_not_read_off_a_program_whose_loops_xla_counts_once(capsys):
    """XLA's cost analysis counts a scan's body once: llama-tiny's step with scanned layers read 4.7 of 8.7 GFLOP.
    The plan then prints the model's FLOPs, never the undercount."""
    from jaxbatch import cli, models

    base = ["model.preset=llama-tiny", "model.vocab_size=4096", "model.task=lm", "data.name=text", "train.batch_size=8",
            "data.seq_len=128", "mesh.data=1"]
    model_flops = models.train_flops_per_token(config.build(base).model, 128) * 8 * 128
    plain = memory.step_memory(config.build(base), 1, jax.devices()[:1])
    assert 0.95 < plain.flops / model_flops < 1.2  # matmuls plus XLA's count of the elementwise work
    for extra in ("model.scan_layers=true", "model.vocab_tiling=4"):
        assert memory.step_memory(config.build([*base, extra]), 1, jax.devices()[:1]).flops is None, extra
    assert cli.main(["plan", *base, "model.scan_layers=true", "mesh.data=8"]) == 0  # the tests' 8 devices
    assert f"compute: {model_flops / 8 / 1e12:.3f} TFLOP per device per step (the model's matmul" in capsys.readouterr().out
