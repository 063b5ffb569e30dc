"""LoRA: the model starts as the base one, only the factors and a classification head train (frozen
parameters bitwise unchanged, no optimizer moments for them, their gradient zero), sharded steps equal one
device, and the merged export equals the LoRA model in transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import params_numpy, random_batch, run_steps, tiny_config
from jaxbatch import config, hf, lora, steps
from jaxbatch import run as run_lib
from jaxbatch import state as state_lib

LORA = ("model.lora_rank=4", "model.lora_alpha=8", "model.lora_targets=query,value,out,wi", "model.hidden_dropout=0")


def _logits(run, params, batch):
    model = nnx.merge(run.graphdef, params)
    return np.asarray(model(batch["input_ids"], batch["attention_mask"]))


def test_the_model_starts_as_the_base_and_only_the_factors_and_the_head_train():
    cfg, base_cfg = tiny_config("mesh.data=1", *LORA), tiny_config("mesh.data=1", "model.hidden_dropout=0")
    batches = [random_batch(cfg, 0), random_batch(cfg, 1)]
    base = run_lib.setup(base_cfg, devices=jax.devices()[:1])
    run = run_lib.setup(cfg, devices=jax.devices()[:1])
    before = params_numpy(run.state)
    factors = {k for k in before if k.endswith((".lora_a", ".lora_b"))}
    assert len(factors) == cfg.model.num_layers * 4 * 2  # each layer's four targets, A and B
    assert {k for k in before if k not in factors} == set(params_numpy(base.state))
    assert all(not before[k].any() for k in factors if k.endswith("lora_b"))  # B = 0: the base model's function
    np.testing.assert_array_equal(_logits(run, run.state.params, batches[0]),
                                  _logits(base, base.state.params, batches[0]))
    trains = {k for k in before if k in factors or k.startswith("classifier.")}
    sums, grads = steps.make_grad_fn(run.family, run.spec.model, run.graphdef)(
        run.state.params, {k: jnp.asarray(v) for k, v in batches[0].items()}, None, 1.0)
    flat = {k: np.asarray(g) for k, g in zip(before, jax.tree.leaves(grads))}
    assert all(not flat[k].any() for k in before if k not in trains)
    assert all(flat[k].any() for k in trains if not k.endswith("lora_a"))  # A's gradient is B-weighted: 0 at first
    norm = float(optax.global_norm(grads)) / float(sums["weight"])
    state, history = run.state, []
    for b in batches:
        state, m = run.steps.train(state, {k: jax.device_put(v, run.batch_sh[k]) for k, v in b.items()})
        history.append(jax.device_get(m))
    after = params_numpy(state)
    for k in before:
        assert (not np.array_equal(before[k], after[k])) == (k in trains), k  # frozen: bitwise unchanged
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)  # AdamW's mu and nu, nothing else
    assert moments == 2 * sum(before[k].size for k in trains)
    assert history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)  # of what trains only
    sequence = run_lib.setup(tiny_config(*LORA, "model.task=sequence", "mesh.data=1"), devices=jax.devices()[:1],
                             abstract=True)
    heads = [k for k, t in zip(_names(sequence.abstract_params), jax.tree.leaves(
        lora.trainable(sequence.abstract_params))) if t and "lora" not in k]
    assert heads == ["classifier.bias", "classifier.kernel", "pooler.bias", "pooler.kernel"]  # a sequence head's


def test_multisteps_accumulates_only_what_trains():
    """optax.MultiSteps sits inside the trained/frozen split: its gradient buffer holds the trained parameters
    only, and k micro-batches through it give the in-jit scan's step."""
    args = ("mesh.data=1", *LORA, "train.accum_steps=2")
    batches = [random_batch(tiny_config(*args), s) for s in (0, 1)]
    scan, _, _ = run_steps(tiny_config(*args), batches, jax.devices()[:1])
    multi, _, run = run_steps(tiny_config(*args, "train.accum_impl=multisteps"), batches, jax.devices()[:1])
    trains = sum(x.size for x, t in zip(jax.tree.leaves(run.state.params),
                                        jax.tree.leaves(lora.trainable(run.state.params))) if t)
    assert sum(x.size for x in jax.tree.leaves(multi.opt_state) if x.ndim) == 3 * trains  # mu, nu, accumulated
    a, b = params_numpy(scan), params_numpy(multi)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_a_sharded_lora_step_equals_one_device():
    one = tiny_config("mesh.data=1", *LORA)
    batches = [random_batch(one, 0), random_batch(one, 1)]
    ref, ref_history, _ = run_steps(one, batches, jax.devices()[:1])
    got, history, _ = run_steps(tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.model=2", *LORA), batches,
                                jax.devices()[:8])
    np.testing.assert_allclose([h["loss"] for h in history], [h["loss"] for h in ref_history], rtol=1e-5)
    a, b = params_numpy(ref), params_numpy(got)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_the_merged_export_equals_the_lora_model_in_transformers(tmp_path):
    """A trained LoRA decoder (grouped heads; the attention output's two-axis input targeted too): export folds
    scale * A . B into each kernel, and transformers' LlamaForCausalLM gives the LoRA model's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxbatch.data import packing

    cfg = config.build(["model.preset=llama-tiny", "model.vocab_size=97", "model.task=lm", "data.name=text",
                        "model.hidden_size=32", "model.num_heads=4", "model.num_kv_heads=2",
                        "model.intermediate_size=64", "model.num_layers=2", "data.seq_len=16", "train.batch_size=8",
                        "mesh.data=1", "optim.learning_rate=1e-2", "optim.warmup_steps=0",
                        "model.lora_rank=4", "model.lora_alpha=16", "model.lora_targets=query,value,out,gate"])
    rng = np.random.default_rng(0)
    rows = packing.pack([list(rng.integers(0, 97, rng.integers(4, 16))) for _ in range(12)], 16)
    state, _, run = run_steps(cfg, [{k: v[:8] for k, v in rows.items()}] * 3, jax.devices()[:1])
    out = hf.export(state.params, run.spec.model, tmp_path / "out")
    ids = rng.integers(0, 97, (2, 10))
    model = nnx.merge(run.graphdef, state.params)
    ours = np.asarray(model(jnp.asarray(ids), jnp.broadcast_to(jnp.arange(10), (2, 10)), jnp.ones((2, 10), jnp.int32)))
    with torch.no_grad():
        theirs = transformers.LlamaForCausalLM.from_pretrained(out)(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    trained = params_numpy(state)
    assert max(np.abs(trained[k]).max() for k in trained if k.endswith("lora_b")) > 1e-3  # the update is there


def test_an_interrupted_lora_run_resumes_bitwise(tmp_path):
    """The optimizer keeps no slots for frozen parameters; the checkpoint restores that state exactly."""
    from jaxbatch import train

    args = (*LORA, "train.steps=8", "train.eval_every=4", "checkpoint.every=2", "data.name=synthetic_ner",
            "mesh.data=2", "mesh.fsdp=4", "data.num_train=96")
    whole = train.train(tiny_config(*args, f"train.run_dir={tmp_path / 'whole'}"))
    train.train(tiny_config(*args, "train.stop_after=5", f"train.run_dir={tmp_path / 'part'}"))
    rest = train.train(tiny_config(*args, f"train.run_dir={tmp_path / 'part'}"))
    a, b = params_numpy(whole.state), params_numpy(rest.state)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_compress_folds_the_updates_in_first(tmp_path):
    """`jaxbatch compress` of a LoRA run works on the merged model: its spec has no LoRA, and a 2:4-pruned
    kernel keeps the merged kernel's values where it keeps any."""
    from jaxbatch import train
    from jaxbatch.compress import pipeline

    train.train(tiny_config(*LORA, "train.steps=3", "train.eval_every=3", "data.name=synthetic_ner",
                            f"train.run_dir={tmp_path / 'r'}"))
    restored = run_lib.restore(tmp_path / "r")
    flat = {k: np.asarray(v) for k, v in zip(_names(restored.params), jax.tree.leaves(restored.params))}
    merged = lora.merged(flat, restored.run.spec.model)
    spec, params, _ = pipeline.apply(restored, pipeline.Options(pattern="2:4"), log=lambda *_: None)
    assert spec.model.lora_rank == 0
    pruned = dict(zip(_names(params), (np.asarray(x) for x in jax.tree.leaves(params))))
    assert set(pruned) == set(merged)
    kernel = "encoder.layers.0.attention.query.kernel"
    kept = pruned[kernel] != 0
    assert kept.mean() == 0.5 and not np.allclose(merged[kernel], flat[kernel])
    np.testing.assert_array_equal(pruned[kernel][kept], merged[kernel][kept])


def _names(params) -> list[str]:
    return [state_lib.param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def test_all_linear_targets_every_dense_layer_but_the_head():
    run = run_lib.setup(tiny_config("model.lora_rank=2", "model.lora_targets=all-linear", "mesh.data=1"),
                        devices=jax.devices()[:1], abstract=True)
    factors = {k.rsplit(".", 2)[-2] for k in _names(run.abstract_params) if k.endswith(".lora_a")}
    assert factors == {"query", "key", "value", "out", "wi", "wo"}  # the encoder's; not the classifier


def test_mfu_counts_what_a_lora_step_computes():
    """The frozen layers' weight-gradient matmuls are skipped: a LoRA step counts two thirds of the family's
    training FLOPs (a lower bound), so MFU is not overstated nor the measured peak raised by it."""
    from jaxbatch import models

    plain, tuned = tiny_config().model, tiny_config(*LORA).model
    assert models.train_flops_per_token(plain, 16) == models.family(plain).train_flops_per_token(plain, 16)
    assert models.train_flops_per_token(tuned, 16) == pytest.approx(2 / 3 * models.train_flops_per_token(plain, 16))


@pytest.mark.parametrize("extra, message", [
    (["model.lora_targets=query,attn"], "model.lora_targets names dense layers among"),
    (["model.lora_rank=-1"], "model.lora_rank must be >= 0"),
    (["model.quant=int8"], "a quantized, factorised or pruned model is not one"),
    (["prune.sparsity=0.5", "prune.end=10"], "a quantized, factorised or pruned model is not one")])
def test_settings_lora_cannot_take_are_one_line(extra, message):
    cfg = tiny_config("model.lora_rank=4", *extra)
    if cfg.model.lora_rank < 0:
        cfg = tiny_config(*extra)
    with pytest.raises(config.ConfigError, match=message):
        lora.validate(cfg.model, cfg.prune)
