import jax
import jax.numpy as jnp
import numpy as np

from conftest import params_numpy, random_batch, run_steps, tiny_config
from jaxbatch import precision


def test_loss_scale_dynamics():
    ls = precision.LossScale.create("fp16", init_scale=1024.0, growth_interval=3)
    ls = ls.adjust(jnp.asarray(False))
    assert float(ls.scale) == 512.0 and int(ls.good_steps) == 0
    for _ in range(2):
        ls = ls.adjust(jnp.asarray(True))
    assert float(ls.scale) == 512.0 and int(ls.good_steps) == 2
    ls = ls.adjust(jnp.asarray(True))
    assert float(ls.scale) == 1024.0 and int(ls.good_steps) == 0
    fixed = precision.LossScale.create("bf16")
    assert float(fixed.adjust(jnp.asarray(False)).scale) == 1.0


def test_fp16_overflow_skips_step_and_halves_scale():
    # A scale of 1e38 makes the fp16 backward pass overflow on the first step.
    cfg = tiny_config("precision.policy=fp16", "precision.init_loss_scale=1e38", "mesh.data=2", "mesh.fsdp=2",
                      "mesh.model=2")
    from jaxbatch import run as run_lib

    before = params_numpy(run_lib.setup(cfg).state)
    state, history, _ = run_steps(cfg, [random_batch(cfg, 0)])
    assert not bool(history[0]["grads_finite"])
    assert float(state.loss_scale.scale) == np.float32(1e38) / 2
    after = params_numpy(state)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert int(state.opt_state[1][0].count) == 0  # the optimizer did not count the skipped step


def test_fp16_normal_scale_trains():
    cfg = tiny_config("precision.policy=fp16", "precision.init_loss_scale=1024", "mesh.data=8")
    state, history, _ = run_steps(cfg, [random_batch(cfg, 0), random_batch(cfg, 1)])
    assert all(bool(h["grads_finite"]) for h in history) and float(state.loss_scale.scale) == 1024.0


def test_bf16_keeps_float32_master_params_and_tracks_fp32_loss():
    batches = [random_batch(tiny_config(), 0)]
    ref_state, ref_hist, _ = run_steps(tiny_config("mesh.data=8"), batches)
    state, hist, _ = run_steps(tiny_config("precision.policy=bf16", "mesh.data=8"), batches)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}
    np.testing.assert_allclose(hist[0]["loss"], ref_hist[0]["loss"], rtol=2e-2)
    assert hist[0]["loss"] != ref_hist[0]["loss"]  # it really computed in bf16
