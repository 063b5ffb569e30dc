import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import dotted, params_numpy, random_batch, run_steps, tiny_config
from jaxbatch import config, optim, run as run_lib, state as state_lib


@pytest.mark.parametrize("rule,batch,lr,warmup", [
    ("none", 4096, 1e-3, 100), ("linear", 4096, 16e-3, 7), ("sqrt", 4096, 4e-3, 7), ("linear", 128, 0.5e-3, 200)])
def test_scale_rules(rule, batch, lr, warmup):
    cfg = config.OptimConfig(learning_rate=1e-3, warmup_steps=100, scale_rule=rule, reference_batch=256)
    hp = optim.scale_hparams(cfg, batch, 1000)
    assert hp.learning_rate == pytest.approx(lr) and hp.warmup_steps == warmup
    # a fraction of the run's own steps (HF's warmup_ratio) is not rescaled by the rule
    fraction = optim.scale_hparams(config.OptimConfig(warmup_fraction=0.06, scale_rule=rule, reference_batch=256),
                                   batch, 1000)
    assert fraction.warmup_steps == 60


@pytest.mark.parametrize("kind", ["linear", "cosine", "polynomial", "constant"])
def test_schedule_warmup_then_decay(kind):
    cfg = config.OptimConfig(learning_rate=1.0, warmup_steps=10, schedule=kind)
    lr = optim.schedule(cfg, optim.scale_hparams(cfg, 32, 110), total_steps=110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    end = float(lr(110))
    assert end == (pytest.approx(1.0) if kind == "constant" else pytest.approx(0.0, abs=1e-6))
    if kind == "linear":
        assert float(lr(60)) == pytest.approx(0.5)


HF_SCHEDULES = [  # (our settings, transformers.optimization's multiplier for the same schedule)
    (dict(schedule="linear"), "_get_linear_schedule_with_warmup_lr_lambda", {}),
    (dict(schedule="cosine"), "_get_cosine_schedule_with_warmup_lr_lambda", dict(num_cycles=0.5)),
    (dict(schedule="cosine", min_lr_ratio=0.1), "_get_cosine_schedule_with_warmup_lr_lambda",
     dict(num_cycles=0.5, min_lr_rate=0.1)),
    (dict(schedule="polynomial", min_lr_ratio=0.05), "_get_polynomial_decay_schedule_with_warmup_lr_lambda",
     dict(power=2.0, lr_end=0.05, lr_init=1.0)),
    (dict(schedule="rsqrt"), "_get_inverse_sqrt_schedule_lr_lambda", dict(timescale=12)),
] + [(dict(schedule="wsd", decay_shape=shape, decay_fraction=0.25, min_lr_ratio=r), "_get_wsd_scheduler_lambda",
      dict(num_stable_steps=200 - 12 - 50, num_decay_steps=50, warmup_type="linear", decay_type=shape,
           min_lr_ratio=r, num_cycles=0.5))
     for shape in ("linear", "cosine", "1-sqrt") for r in (0.0, 0.1)]


@pytest.mark.parametrize("ours,name,kwargs", HF_SCHEDULES,
                         ids=["-".join(map(str, ours.values())) for ours, _, _ in HF_SCHEDULES])
def test_every_schedule_equals_transformers_step_by_step(ours, name, kwargs):
    """The learning rate of each of a 200-step run's optimizer steps (12 of warmup) is HF's for the same schedule.
    HF's WSD warmup starts at min_lr_ratio x peak, ours (as every warmup here, MaxText's and HF's other
    schedules) at 0, so with a floor WSD is compared from the warmup's end."""
    opt = pytest.importorskip("transformers.optimization")
    cfg = config.OptimConfig(learning_rate=3e-4, warmup_steps=12, **ours)
    lr = optim.schedule(cfg, optim.scale_hparams(cfg, 32, 200), total_steps=200)
    extra = {} if name.startswith("_get_wsd") or "inverse" in name else dict(num_training_steps=200)
    multiplier = getattr(opt, name)
    start = 12 if ours.get("min_lr_ratio") and ours["schedule"] == "wsd" else 0
    steps = np.arange(start, 201)
    want = [3e-4 * multiplier(int(t), num_warmup_steps=12, **extra, **kwargs) for t in steps]
    np.testing.assert_allclose(np.asarray(jax.vmap(lr)(steps)), want, rtol=2e-6, atol=3e-4 * 3e-7)  # float32


@pytest.mark.parametrize("bad,message", [
    (dict(schedule="wsd", decay_fraction=0.95), "do not fit in train.steps=200"),
    (dict(schedule="rsqrt", warmup_steps=0), "needs a warmup"),
    (dict(schedule="inverse_sqrt"), "optim.schedule must be one of linear, cosine, polynomial, constant, wsd, rsqrt"),
])
def test_a_schedule_that_cannot_be_built_is_one_config_error(bad, message):
    cfg = config.OptimConfig(**{"warmup_steps": 12, **bad})
    with pytest.raises(config.ConfigError, match=message):
        optim.schedule(cfg, optim.scale_hparams(cfg, 32, 200), total_steps=200)


@pytest.mark.parametrize("overrides,message", [
    (["optim.decay_shape=1-sqrt"], "optim.schedule=wsd, and this run's schedule is linear"),
    (["optim.decay_fraction=0.2", "optim.schedule=cosine"], "optim.schedule=wsd, and this run's schedule is cosine"),
    (["optim.schedule=wsd", "optim.decay_shape=exp"], "decay_shape must be one of linear, cosine, 1-sqrt"),
    (["optim.schedule=wsd", "optim.decay_fraction=0"], "decay_fraction must be in"),
    (["optim.min_lr_ratio=1.0"], "min_lr_ratio must be in"),
    (["optim.schedule=constant", "optim.min_lr_ratio=0.1"], "constant does not decay"),
    (["optim.muon_momentum=0.9"], "optim.muon_momentum is optim.name=muon's, and this run's optimizer is adamw"),
    (["optim.name=muon", "model.lora_rank=4"], "LoRA freezes; its factors and heads would all take AdamW"),
])
def test_optimizer_settings_that_would_be_ignored_or_are_out_of_range_are_refused(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.validate(config.build(["model.preset=tiny"] + overrides), 1)


def _muon_case(torch, steps, weight_decay):
    """Our muon and torch.optim.Muon (adjust_lr_fn="match_rms_adamw", Moonlight's scale) + AdamW on the same
    random gradients: a (48 in, 96 out) kernel, an (embed 64, heads 6, kv 8) one (one 64 x 48 matrix, as a
    Linear's weight), a bias. Returns each parameter's last change, ours and torch's, as (in, out) arrays."""
    from flax import nnx

    cfg = config.build(["optim.name=muon", f"optim.weight_decay={weight_decay}", "optim.clip_norm=0",
                        "optim.schedule=constant", "optim.warmup_steps=0", "optim.learning_rate=0.02"]).optim
    tx, _ = optim.make(cfg, optim.scale_hparams(cfg, 32, steps), steps)
    rng = np.random.default_rng(0)
    meta = {"k": dict(contract=1, logical_axes=("embed", "mlp")),
            "q": dict(contract=1, logical_axes=("embed", "heads", "kv")), "b": dict(decay=False, logical_axes=("mlp",))}
    init = {"k": rng.normal(size=(48, 96)), "q": rng.normal(size=(64, 6, 8)), "b": rng.normal(size=(96,))}

    def wrap(arrays):
        return {n: nnx.Param(jnp.asarray(a, jnp.float32), **meta[n]) for n, a in arrays.items()}

    def as_torch(a):  # a Linear's (out, in) weight
        return torch.tensor(a.reshape(a.shape[0], -1).T.copy() if a.ndim > 1 else a, dtype=torch.float32)

    params = wrap(init)
    state = tx.init(params)
    update = jax.jit(tx.update)  # one compile, not op by op for each of up to 80 steps
    theirs = {n: torch.nn.Parameter(as_torch(a)) for n, a in init.items()}
    muon = torch.optim.Muon([theirs["k"], theirs["q"]], lr=0.02, weight_decay=weight_decay, momentum=0.95,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([theirs["b"]], lr=0.02, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=0.0)
    for _ in range(steps):
        grads = {n: rng.normal(size=a.shape) for n, a in init.items()}
        updates, state = update(wrap(grads), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        before = {n: t.detach().clone() for n, t in theirs.items()}
        for n, t in theirs.items():
            t.grad = as_torch(grads[n])
        muon.step()
        adamw.step()
    ours = {n: np.asarray(u[...]).reshape(init[n].shape[0], -1) if init[n].ndim > 1 else np.asarray(u[...])
            for n, u in updates.items()}
    torch_delta = {n: (t.detach() - before[n]).numpy() for n, t in theirs.items()}
    return ours, {n: d.T if d.ndim > 1 else d for n, d in torch_delta.items()}


@pytest.mark.parametrize("steps,rtol", [(1, 5e-5), (80, 2e-3)])
def test_muon_is_torch_muon_with_moonlights_scale_on_matrices_and_adamw_on_the_rest(monkeypatch, steps, rtol):
    """torch.optim.Muon runs Newton-Schulz in bfloat16; here in float32, as ours, so they can agree closely. Its
    first update is ours to float32 rounding (scale, decay, which axes form the matrix). optax's momentum
    (MaxText's Muon) bias-corrects its Nesterov average, which torch's does not: the weights of the new gradient
    and of the average differ by a factor (1 - 0.95^t) / (1 - 0.95^(t+1)), 0.08% by step 80."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.float())
    ours, theirs = _muon_case(torch, steps, weight_decay=0.1 if steps == 1 else 0.0)
    for name in ("k", "q"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=rtol, atol=rtol * np.abs(theirs[name]).max(),
                                   err_msg=name)
    np.testing.assert_allclose(ours["b"], theirs["b"], rtol=1e-4, atol=1e-7)


def test_muon_takes_the_matrices_and_leaves_embeddings_heads_norms_and_biases_to_adamw():
    model_cfg = config.build(["model.preset=tiny"]).model
    _, params = state_lib.abstract_model(model_cfg, "fp32")
    leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    dims = {dotted(p): optim.muon_dims(v) for p, v in leaves}
    muon = {k for k, d in dims.items() if d is not None}
    # 2 layers x (query, key, value, attention out, MLP in, MLP out) kernels; not the classifier (a task head)
    assert muon == {f"encoder.layers.{i}.{m}.kernel" for i in range(2)
                    for m in ("attention.query", "attention.key", "attention.value", "attention.out", "mlp.wi",
                              "mlp.wo")}, sorted(muon)
    assert dims["encoder.layers.0.attention.query.kernel"] == optax.contrib.MuonDimensionNumbers((0,), (1, 2))
    assert dims["encoder.layers.0.attention.out.kernel"] == optax.contrib.MuonDimensionNumbers((0, 1), (2,))


def test_weight_decay_mask_excludes_bias_and_layernorm():
    model_cfg = config.build(["model.preset=tiny"]).model
    _, params = state_lib.abstract_model(model_cfg, "fp32")
    mask = {dotted(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    assert mask["encoder.layers.0.attention.query.kernel"] and mask["encoder.word_embeddings.embedding"]
    assert not mask["encoder.layers.0.attention.query.bias"]
    assert not mask["encoder.layers.0.attention_norm.scale"] and not mask["encoder.embeddings_norm.bias"]
    # decayed: 3 embeddings + 2 layers x (q, k, v, out, wi, wo kernels) + classifier kernel
    assert sum(mask.values()) == 3 + 2 * 6 + 1 and len(mask) == 39


@pytest.mark.parametrize("name", ["lamb", "lars", "adafactor", "sgd", "muon"])
def test_trust_ratio_optimizers_sharded_equal_unsharded(name):
    """LAMB/LARS need whole-tensor norms, Muon whole matrices; under jit with FSDP+TP shards they must still be
    global."""
    cfg1 = tiny_config(f"optim.name={name}", "mesh.data=1")
    batches = [random_batch(cfg1, 0), random_batch(cfg1, 1)]
    ref, ref_hist, _ = run_steps(cfg1, batches, jax.devices()[:1])
    cfg8 = tiny_config(f"optim.name={name}", "mesh.data=1", "mesh.fsdp=4", "mesh.model=2")
    got, hist, _ = run_steps(cfg8, batches)
    ref_p, got_p = params_numpy(ref), params_numpy(got)
    init = params_numpy(run_lib.setup(cfg1, devices=jax.devices()[:1]).state)
    moved = sum(np.abs(ref_p[k] - init[k]).max() > 0 for k in ref_p)
    assert moved > 0.75 * len(ref_p)  # the optimizer really updated nearly every tensor
    for k in ref_p:
        np.testing.assert_allclose(got_p[k], ref_p[k], atol=1e-5, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(hist[1]["loss"], ref_hist[1]["loss"], rtol=1e-5)


def test_flattened_adamw_equals_adamw():
    """optim.flatten holds adamw's two moments as one vector each: the same update (weight decay still only
    where the mask says), 2 moment arrays instead of 2 per parameter; on a data-parallel mesh only."""
    cfg = tiny_config("optim.weight_decay=0.1", "mesh.data=2")
    batches = [random_batch(cfg, i) for i in range(3)]
    ref, ref_hist, _ = run_steps(cfg, batches, jax.devices()[:2])
    flat_cfg = tiny_config("optim.weight_decay=0.1", "mesh.data=2", "optim.flatten=true")
    got, hist, run = run_steps(flat_cfg, batches, jax.devices()[:2])
    n_params = len(jax.tree.leaves(got.params))
    assert len(jax.tree.leaves(got.opt_state)) < len(jax.tree.leaves(ref.opt_state)) - 2 * n_params + 8
    # atol 1e-6 is 0.1% of one step's update (lr 1e-3) and still catches a wrong decay mask: decay (0.1) where
    # the mask says none moves a LayerNorm scale by 3e-4 in 3 steps, decay missed on a 0.02 weight by 6e-6.
    # Float evaluation order differs between the two programs; on session 10's box one embedding entry of
    # 32768 differed by 1.1e-7 (the CPU's features decide XLA's code).
    for k, v in params_numpy(ref).items():
        np.testing.assert_allclose(params_numpy(got)[k], v, rtol=1e-6, atol=1e-6, err_msg=k)
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist], rtol=1e-6)
    with pytest.raises(config.ConfigError, match="optim.flatten.*data-parallel"):
        config.validate(tiny_config("optim.flatten=true", "mesh.data=1", "mesh.fsdp=2"), 2)
    with pytest.raises(config.ConfigError, match="optim.flatten applies to adamw"):
        optim.make(config.build(["optim.name=lamb", "optim.flatten=true"]).optim, optim.scale_hparams(
            config.build([]).optim, 32, 10), 10)


def test_adafactor_decays_weights_like_every_other_optimizer_here():
    """Without decay it is optax.adafactor exactly; weight_decay adds lr_t * wd * p (decoupled, following the
    schedule), where optax.adafactor's weight_decay_rate=0.01 would take 1% of every weight a step."""
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(0)
    params = {"kernel": jnp.asarray(rng.normal(size=(256, 160)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(160,)), jnp.float32)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(3)]
    lr = optax.linear_schedule(0.0, 0.1, 2)

    def run(tx):
        state, p, out = tx.init(params), params, []
        for g in grads:
            u, state = tx.update(g, state, p)
            out.append(u)
            p = optax.apply_updates(p, u)
        return out

    for ours, theirs in zip(run(optim.adafactor(lr, 0.0)), run(optax.adafactor(lr))):
        for k in params:
            np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7)
    plain, decayed = run(optim.adafactor(lr, 0.0)), run(optim.adafactor(lr, 0.5))
    np.testing.assert_array_equal(decayed[0]["kernel"], plain[0]["kernel"])  # lr 0 at the first step: no decay
    p1 = optax.apply_updates(params, plain[0])  # the second step's lr is 0.05: it takes 0.05 x 0.5 of p
    for k in params:
        np.testing.assert_allclose(decayed[1][k] - plain[1][k], -0.025 * p1[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_equals_optax_to_the_last_bit_or_so(max_norm):
    """Below the threshold the gradients pass unchanged; above it they are optax's within float32 rounding, and
    the state is optax's (checkpoints written with either restore with the other)."""
    grads = {"a": jax.random.normal(jax.random.key(0), (37, 5)), "b": (jax.random.normal(jax.random.key(1), (9,)),)}
    ours, theirs = optim.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    assert jax.tree.structure(ours.init(grads)) == jax.tree.structure(theirs.init(grads))
    got, want = ours.update(grads, ours.init(grads))[0], theirs.update(grads, theirs.init(grads))[0]
    for g, w, x in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(grads)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)
        assert np.array_equal(g, x) == (max_norm == 100.0)
    assert float(optax.global_norm(got)) == pytest.approx(min(max_norm, float(optax.global_norm(grads))), rel=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adamw-flat", "lamb", "lars", "sgd", "adafactor", "muon"])
def test_every_optimizer_clips_by_the_norm_it_is_given_exactly(name):
    """The train step passes the gradients' global norm (read once for its finiteness check and metrics) to
    clipping; every optimizer's update with it is the update without it, bit for bit."""
    opt = ["optim.name=adamw", "optim.flatten=true"] if name == "adamw-flat" else [f"optim.name={name}"]
    cfg = config.build(opt + ["optim.clip_norm=0.1"]).optim
    tx, _ = optim.make(cfg, optim.scale_hparams(cfg, 32, 100), total_steps=100)
    params = {"kernel": jax.random.normal(jax.random.key(0), (8, 4)),
              "bias": jax.random.normal(jax.random.key(1), (4,))}
    grads = jax.tree.map(lambda x: 3 * x + 1, params)
    state = tx.init(params)
    for _ in range(3):
        plain, _ = tx.update(grads, state, params)
        given, state = tx.update(grads, state, params, grad_norm=optax.global_norm(grads))
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(given)):
            np.testing.assert_array_equal(a, b)
