import copy

import pytest

from conftest import tiny_config
from jaxbatch import config, memory, mesh as mesh_lib, optim


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config("train.batch_size=64", "data.seq_len=64", "mesh.data=4", "mesh.fsdp=2")
    mesh = mesh_lib.make_mesh(cfg.mesh)
    tx, schedule = optim.make(cfg.optim, optim.scale_hparams(cfg.optim, 64), 10)
    measured = {k: memory.step_memory(cfg, mesh, tx, schedule, k) for k in (1, 2, 4)}
    return cfg, mesh, tx, schedule, measured


def test_memory_shrinks_with_accumulation_and_params_are_sharded(setup):
    *_, measured = setup
    one, four = measured[1], measured[4]
    assert four.temp < 0.6 * one.temp and four.total < one.total
    n_params = 141_769  # tiny BERT with a 9-label token head
    # fsdp=2 halves every embed-sharded tensor; 4-byte floats; Adam keeps two moments
    assert 4 * n_params / 2 <= one.params < 4 * n_params * 0.55  # only 1-D biases of TP axes stay whole
    assert one.optimizer == pytest.approx(2 * one.params, rel=0.01)


def test_planner_picks_smaller_micro_batch_for_smaller_budget(setup):
    cfg, mesh, tx, schedule, measured = setup
    sizes = {k: m.total for k, m in measured.items()}
    lines = []
    big = memory.plan_micro_batch(cfg, mesh, tx, schedule, sizes[1] + 1, log=lines.append)
    assert (big.micro_batch, big.accum_steps) == (64, 1)
    small = memory.plan_micro_batch(cfg, mesh, tx, schedule, sizes[2] - 1, log=lines.append)
    assert small.accum_steps == 4 and small.micro_batch == 16
    assert any("too big" in line for line in lines)
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = 16  # micro-batches 16 and 8 over 8 batch shards: two compiles to exhaust
    with pytest.raises(config.ConfigError, match="no micro-batch of global batch 16 fits"):
        memory.plan_micro_batch(cfg, mesh, tx, schedule, 1000, log=lines.append)
