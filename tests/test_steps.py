"""One train step on every mesh layout equals the single-device step; shardings are what the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import dotted, params_numpy, random_batch, run_steps, tiny_config
from jaxbatch import config
from jaxbatch import run as run_lib
from jaxbatch.data import pipeline
from jaxbatch.losses import IGNORE_INDEX

MESHES = {  # (data, fsdp, model)
    "dp": (8, 1, 1),
    "fsdp": (1, 8, 1),
    "tp": (1, 1, 4),  # tiny has 4 heads
    "mixed": (2, 2, 2),
    "dp_tp": (4, 1, 2),
}


@pytest.fixture(scope="module")
def reference():
    cfg = tiny_config("mesh.data=1")
    state, history, _ = run_steps(cfg, [random_batch(cfg, 0), random_batch(cfg, 1)], jax.devices()[:1])
    return params_numpy(state), history


def _mesh_cfg(shape):
    d, f, m = shape
    return tiny_config(f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.model={m}")


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_step_equals_single_device(name, reference):
    ref_params, ref_history = reference
    cfg = _mesh_cfg(MESHES[name])
    n = int(np.prod(MESHES[name]))
    state, history, _ = run_steps(cfg, [random_batch(cfg, 0), random_batch(cfg, 1)], jax.devices()[:n])
    for got, want in zip(history, ref_history):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
    got_params = params_numpy(state)
    assert got_params.keys() == ref_params.keys()
    for key in ref_params:
        np.testing.assert_allclose(got_params[key], ref_params[key], atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["tp", "mixed"])
def test_sharded_step_with_attention_dropout_equals_single_device(name):
    """Attention-probability masks are drawn over the global (batch, heads, q, k) index, so a mesh that splits
    batch and heads drops the same probabilities as one device."""
    batches = lambda cfg: [random_batch(cfg, 0), random_batch(cfg, 1)]  # noqa: E731
    one = tiny_config("mesh.data=1", "model.attention_dropout=0.3")
    ref, ref_history, _ = run_steps(one, batches(one), jax.devices()[:1])
    plain, _, _ = run_steps(tiny_config("mesh.data=1"), batches(one), jax.devices()[:1])
    cfg = config.replace(_mesh_cfg(MESHES[name]), model__attention_dropout=0.3)
    state, history, _ = run_steps(cfg, batches(cfg), jax.devices()[:int(np.prod(MESHES[name]))])
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in ref_history], rtol=1e-5)
    got, want, without = params_numpy(state), params_numpy(ref), params_numpy(plain)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=1e-5, err_msg=key)
    assert max(abs(want[k] - without[k]).max() for k in want) > 1e-4  # the dropout changed the step


def _shard_shapes(state):
    return {dotted(p): x.addressable_shards[0].data.shape for p, x in jax.tree_util.tree_leaves_with_path(state.params)}


# Expected per-device shapes of a few parameters of tiny BERT (hidden 64, 4 heads x 16, mlp 256, vocab 512),
# written out by hand from the rules (vocab->model, embed->fsdp, mlp->model, heads->model).
EXPECTED = {
    "dp": {"query.kernel": (64, 4, 16), "wi.kernel": (64, 256), "wo.kernel": (256, 64),
           "word_embeddings.embedding": (512, 64), "attention_norm.scale": (64,)},
    "fsdp": {"query.kernel": (8, 4, 16), "wi.kernel": (8, 256), "wo.kernel": (256, 8),
             "word_embeddings.embedding": (512, 8), "attention_norm.scale": (8,)},
    "tp": {"query.kernel": (64, 1, 16), "out.kernel": (1, 16, 64), "wi.kernel": (64, 64), "wo.kernel": (64, 64),
           "word_embeddings.embedding": (128, 64), "attention_norm.scale": (64,)},
    "mixed": {"query.kernel": (32, 2, 16), "wi.kernel": (32, 128), "wo.kernel": (128, 32),
              "word_embeddings.embedding": (256, 32)},
}


def _check_expected(shapes, expected):
    for suffix, want in expected.items():
        matches = [v for k, v in shapes.items() if k.endswith(suffix)]
        assert matches, suffix
        assert all(m == want for m in matches), (suffix, matches, want)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_parameter_shards_follow_rules(name):
    cfg = _mesh_cfg(MESHES[name])
    n = int(np.prod(MESHES[name]))
    state, _, _ = run_steps(cfg, [random_batch(cfg, 0)], jax.devices()[:n])
    _check_expected(_shard_shapes(state), EXPECTED[name])
    # optimizer moments are sharded like their parameters (FSDP shards optimizer state too)
    mu = state.opt_state[1][0].mu
    for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(mu)):
        assert p.sharding == m.sharding, jax.tree_util.keystr(path)


def test_wrong_rule_is_caught():
    """A rules table that sends mlp to 'fsdp' instead of 'model' gives other shard shapes, so the check
    above fails for it."""
    cfg = _mesh_cfg(MESHES["tp"])
    cfg = config.replace(cfg, mesh__rules=tuple((name, ("fsdp",) if name == "mlp" else axes)
                                                for name, axes in cfg.mesh.rules))
    state, _, _ = run_steps(cfg, [random_batch(cfg, 0)], jax.devices()[:4])
    with pytest.raises(AssertionError):
        _check_expected(_shard_shapes(state), EXPECTED["tp"])


@pytest.mark.parametrize("name,collectives", [("dp", ["all-reduce"]), ("fsdp", ["all-gather"]),
                                              ("tp", ["all-reduce"])])
def test_compiled_step_has_expected_collectives(name, collectives):
    cfg = _mesh_cfg(MESHES[name])
    n = int(np.prod(MESHES[name]))
    state, _, run = run_steps(cfg, [random_batch(cfg, 0)], jax.devices()[:n])
    batch = random_batch(cfg, 1)
    hlo = run.steps.lower_train(state, batch).compile().as_text()
    for op in collectives:
        assert f" {op}(" in hlo or f"{op}-start" in hlo, f"{op} missing from the {name} step"


def test_single_device_step_has_no_collectives():
    cfg = tiny_config("mesh.data=1")
    state, _, run = run_steps(cfg, [random_batch(cfg, 0)], jax.devices()[:1])
    hlo = run.steps.lower_train(state, random_batch(cfg, 1)).compile().as_text()
    assert "all-reduce" not in hlo and "all-gather" not in hlo


def test_compile_ahead_runs_the_same_step():
    """run.setup(compile_ahead=[shape]) compiles the train step for that batch shape on a thread while the
    state initialises; the loop's steps then run that executable (the jitted function never compiles for
    that shape) with the same numbers as the jitted step; another batch shape falls back to the jitted step."""
    cfg = tiny_config("mesh.data=2")
    batches = [random_batch(cfg, 0), random_batch(cfg, 1)]
    devices = jax.devices()[:2]
    reference, ref_history, _ = run_steps(cfg, batches, devices)
    run = run_lib.setup(cfg, devices=devices, compile_ahead=[(cfg.train.batch_size, cfg.data.seq_len)])
    state = run.state
    for b, ref_metrics in zip(batches, ref_history):
        state, m = run.steps.train(state, {k: jax.device_put(v, run.batch_sh[k]) for k, v in b.items()})
        assert float(m["loss"]) == float(ref_metrics["loss"])
    assert run.steps._train._cache_size() == 0  # every full batch ran the executable compiled ahead
    for k, v in params_numpy(reference).items():
        np.testing.assert_array_equal(params_numpy(state)[k], v, err_msg=k)
    half = random_batch(cfg, 2, batch_size=cfg.train.batch_size // 2)
    state, _ = run.steps.train(state, {k: jax.device_put(v, run.batch_sh[k]) for k, v in half.items()})
    assert run.steps._train._cache_size() == 1


def test_cpu_devices_run_one_program_at_a_time():
    """On several XLA:CPU devices a step starts only when the previous program has finished on every device
    (two in flight can deadlock in their all-reduces): each train or eval launch finds the outputs of the
    one before it ready, whichever kind it was; the numbers are those of the unguarded steps."""
    cfg = tiny_config("mesh.data=2")
    batches = [random_batch(cfg, i) for i in range(3)]
    reference, ref_history, _ = run_steps(cfg, batches[:2], jax.devices()[:2])
    run = run_lib.setup(cfg, devices=jax.devices()[:2])
    steps, seen = run.steps, []

    def checked(program):
        def call(*args):
            seen.append(all(x.is_ready() for x in jax.tree.leaves(steps._in_flight)))
            return program(*args)
        return call

    steps._train, steps._eval = checked(steps._train), None
    place = lambda b: {k: jax.device_put(v, run.batch_sh[k]) for k, v in b.items()}  # noqa: E731
    state, m0 = steps.train(run.state, place(batches[0]))
    steps.eval(state.params, place(batches[2]))  # builds the eval program
    steps._eval = checked(steps._eval)
    sums = [steps.eval(state.params, place(batches[2]))[0] for _ in range(3)]
    state, m1 = steps.train(state, place(batches[1]))
    assert seen == [True] * 5
    assert [float(m0["loss"]), float(m1["loss"])] == [float(h["loss"]) for h in ref_history]
    assert len({float(s["loss_sum"]) for s in sums}) == 1
    for k, v in params_numpy(reference).items():
        np.testing.assert_array_equal(params_numpy(state)[k], v, err_msg=k)


def _gradients(cfg, batches, labelled_per_row=0.0):
    """Each batch's gradient of the step's objective at the same initial parameters (plain SGD at lr 1, no
    clipping, decay or dropout: a step moves the parameters by minus the gradient)."""
    cfg = config.replace(cfg, optim__name="sgd", optim__learning_rate=1.0, optim__momentum=0.0,
                         optim__weight_decay=0.0, optim__clip_norm=0.0, model__hidden_dropout=0.0)
    run = run_lib.setup(cfg, devices=jax.devices()[:1], labelled_per_row=labelled_per_row)
    before, grads, history = params_numpy(run.state), [], []
    for b in batches:
        state, m = run.steps.train(jax.tree.map(jnp.copy, run.state),
                                   {k: jax.device_put(v, run.batch_sh[k]) for k, v in b.items()})
        grads.append({k: before[k] - v for k, v in params_numpy(state).items()})
        history.append(jax.device_get(m))
    return grads, history


def test_dataset_loss_norm_weighs_every_position_alike():
    """train.loss_norm=dataset: over batches that hold a split once, the mean of the steps' gradients is the
    split's token-mean gradient, however unevenly the batches hold labelled positions (as length buckets
    make them). Dividing each batch by its own count (batch) weighs the sparse batch's positions more."""
    cfg = tiny_config("mesh.data=1")
    long, short = random_batch(cfg, 0), random_batch(cfg, 1)
    short["labels"][:, 4:] = IGNORE_INDEX  # a few labelled positions per row
    split = {k: np.concatenate([long[k], short[k]]) for k in long}
    per_row = pipeline.labelled_per_row(split)
    (whole,), _ = _gradients(config.replace(cfg, train__batch_size=32), [split])
    by_dataset, _ = _gradients(cfg, [long, short], per_row)
    by_batch, _ = _gradients(cfg, [long, short])
    for key, want in whole.items():
        np.testing.assert_allclose((by_dataset[0][key] + by_dataset[1][key]) / 2, want, rtol=1e-4, atol=1e-7,
                                   err_msg=key)
    key = "classifier.kernel"
    off = np.abs((by_batch[0][key] + by_batch[1][key]) / 2 - whole[key]).max() / np.abs(whole[key]).max()
    assert off > 0.05, off


def test_noise_scale_sees_the_batch_mean_gradient_under_either_loss_norm():
    """grad_sq_big / grad_sq_small are norms of the batch's and micro-batches' own mean gradients, whatever
    the step divides the loss by."""
    cfg = tiny_config("mesh.data=1", "train.accum_steps=2")
    batch = random_batch(cfg, 0)
    _, (by_batch,) = _gradients(cfg, [batch])
    _, (by_dataset,) = _gradients(cfg, [batch], labelled_per_row=3.0)
    for key in ("grad_sq_big", "grad_sq_small", "loss"):
        np.testing.assert_allclose(by_dataset[key], by_batch[key], rtol=1e-4, err_msg=key)
    assert by_dataset["grad_norm"] != pytest.approx(by_batch["grad_norm"], rel=1e-2)  # the steps did differ


def test_one_non_finite_gradient_anywhere_skips_the_update():
    """The step reads finiteness off the gradients' global norm: one NaN or inf in any element of any array
    skips the update (params and moments kept) and counts a bad step; a huge but finite gradient does not."""
    from jaxbatch import steps as steps_lib

    cfg = tiny_config("mesh.data=1")
    run = run_lib.setup(cfg, devices=jax.devices()[:1])
    ones = jax.tree.map(jnp.ones_like, run.state.params)
    name = "encoder.layers.0.mlp.wo.kernel"
    before = params_numpy(run.state)
    assert name in before

    def step_with(value):
        grads = jax.tree_util.tree_map_with_path(
            lambda p, g: g.at[(1,) * g.ndim].set(value) if dotted(p) == name else g, ones)
        state, norm, finite = steps_lib._apply_gradients(run.state, grads, jnp.float32(1.0), run.tx, cfg.prune)
        return params_numpy(state), state, float(norm), bool(finite)

    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        after, state, norm, finite = step_with(bad)
        assert not finite and not np.isfinite(norm) and int(state.bad_steps) == 1, bad
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    after, state, norm, finite = step_with(1e18)
    assert finite and norm == pytest.approx(1e18, rel=1e-6) and int(state.bad_steps) == 0
    assert not np.array_equal(after[name], before[name])
