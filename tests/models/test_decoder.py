"""Decoder family (GPT-2 and LLaMA-style): causal and packed attention, GQA/RoPE, remat, sharded steps,
and logits equal to Hugging Face's PyTorch models."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import dotted, params_numpy, replay_dropout_masks, run_steps
from jaxbatch import config, hf, run as run_lib, steps
from jaxbatch.data import packing
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.models import decoder, layers

ARCHS = ["gpt-tiny", "llama-tiny", "gemma3-tiny:model.attention_softcap=2:model.logit_softcap=5"]  # the einsum path


def _cfg(preset, *extra):
    """A tiny decoder of `preset` (`preset:key=value:...` adds overrides)."""
    preset, *settings = preset.split(":")
    return config.build([f"model.preset={preset}", "model.vocab_size=97", "model.task=lm", "model.hidden_size=32",
                         "model.num_heads=4", "model.intermediate_size=64", "model.num_layers=2", *settings, *extra])


def _model(preset, *extra):
    cfg = _cfg(preset, *extra).model
    return cfg, decoder.Decoder(cfg, rngs=nnx.Rngs(params=0))


def _ids(b=2, t=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 97, (b, t)), jnp.int32)


@pytest.mark.parametrize("preset", ARCHS)
def test_no_future_token_changes_a_past_logit(preset):
    _, model = _model(preset)
    ids = _ids()
    pos, seg = jnp.broadcast_to(jnp.arange(12), (2, 12)), jnp.ones((2, 12), jnp.int32)
    a = model(ids, pos, seg)
    b = model(ids.at[:, 7].set((ids[:, 7] + 1) % 97), pos, seg)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-4


@pytest.mark.parametrize("preset", ARCHS)
def test_a_packed_document_has_its_logits_alone(preset):
    _, model = _model(preset)
    docs = [list(np.random.default_rng(i).integers(0, 97, n)) for i, n in enumerate((5, 9, 4))]
    rows = packing.pack(docs, seq_len=17)
    assert rows["input_ids"].shape == (1, 17) and rows["segment_ids"][0].tolist() == [1] * 5 + [2] * 9 + [3] * 3
    packed = model(*(jnp.asarray(rows[k]) for k in ("input_ids", "positions", "segment_ids")))
    alone = model(jnp.asarray([docs[1]]), jnp.arange(9)[None], jnp.ones((1, 9), jnp.int32))
    np.testing.assert_allclose(packed[0, 5:14], alone[0], atol=2e-5)
    # the target across a boundary carries no loss; the last document continues past the row as a new one
    assert rows["labels"][0, 4] == -100 and rows["labels"][0, 3] == docs[0][4]


def test_gqa_and_rope_shapes():
    cfg, model = _model("llama-tiny", "model.num_kv_heads=2")
    assert model.layers[0].attention.query.kernel.shape == (32, 4, 8)
    assert model.layers[0].attention.key.kernel.shape == (32, 2, 8)
    assert model.lm_head.kernel.shape == (32, 97) and not hasattr(model, "position_embeddings")
    x = jnp.ones((1, 3, 2, 8))
    rotated = decoder.rope(x, jnp.arange(3)[None], decoder.rope_frequencies(cfg, 8))
    np.testing.assert_allclose(rotated[0, 0], x[0, 0])  # position 0 is the identity
    np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_gives_identical_gradients(policy):
    def grads(remat):
        cfg, model = _model("llama-tiny", f"model.remat={remat}")
        graphdef, params = nnx.split(model)
        ids = _ids()
        pos, seg = jnp.broadcast_to(jnp.arange(12), (2, 12)), jnp.ones((2, 12), jnp.int32)
        loss = lambda p: nnx.merge(graphdef, p)(ids, pos, seg).sum()  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    a, b = grads("none"), grads(policy)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset, remat, layers", [("gpt-tiny", "none", 3), ("llama-tiny", "dots_saveable", 3),
                                                   ("gemma3-tiny:model.sliding_window=4", "dots_saveable", 7)])
def test_scanned_layers_give_identical_logits_and_gradients(preset, remat, layers):
    """model.scan_layers runs one compiled layer in lax.scan over stacked parameters: same numbers as the
    unrolled loop, gradients land on the same per-layer parameters, and the HLO holds one layer body. Gemma's
    windowed, windowed, global layers scan as groups of three, the seventh layer after them."""
    ids = _ids()
    pos, seg = jnp.broadcast_to(jnp.arange(12), (2, 12)), jnp.ones((2, 12), jnp.int32)

    def run(scan):
        cfg, model = _model(preset, f"model.num_layers={layers}", f"model.remat={remat}", f"model.scan_layers={scan}")
        graphdef, params = nnx.split(model)
        loss = lambda p: nnx.merge(graphdef, p)(ids, pos, seg).sum()  # noqa: E731
        step = jax.jit(jax.value_and_grad(loss))
        return step(params), step.lower(params).as_text()

    (la, ga), unrolled = run(False)
    (lb, gb), scanned = run(True)
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(ga), jax.tree.leaves(gb)):  # float32 rounding,
        scale = max(1.0, float(np.abs(x).max()))  # summed in another order: 1e-5 of the tensor's largest entry
        np.testing.assert_allclose(y, x, rtol=2e-5, atol=1e-5 * scale, err_msg=dotted(path))
    assert "while" in scanned and "while" not in unrolled
    n_dots = lambda text: text.count("dot_general")  # noqa: E731
    assert n_dots(scanned) < n_dots(unrolled)


def test_scanned_bert_layers_train_like_the_loop():
    from conftest import random_batch, tiny_config

    cfg = tiny_config("model.num_layers=2", "model.hidden_dropout=0", "train.batch_size=8", "mesh.data=2",
                      "mesh.model=2")
    batch = random_batch(cfg, 0)
    a, _, _ = run_steps(cfg, [batch], jax.devices()[:4])
    b, _, _ = run_steps(config.replace(cfg, model__scan_layers=True), [batch], jax.devices()[:4])
    pa, pb = params_numpy(a), params_numpy(b)
    for key in pa:
        np.testing.assert_allclose(pb[key], pa[key], rtol=2e-5, atol=1e-6, err_msg=key)


def _flat(params) -> dict:
    return {dotted(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def _lm_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(0, cfg.model.vocab_size, rng.integers(3, 20))) for _ in range(24)]
    rows = packing.pack(docs, cfg.data.seq_len)
    return {k: v[: cfg.train.batch_size] for k, v in rows.items()}


@pytest.mark.parametrize("preset", [*ARCHS, "llama-tiny:model.attention_dropout=0.2"])
@pytest.mark.parametrize("mesh", [(8, 1, 1), (1, 8, 1), (1, 1, 4), (2, 2, 2)])
def test_sharded_step_equals_single_device_with_dropout(preset, mesh):
    extra = ["model.hidden_dropout=0.1", "train.batch_size=8", "data.seq_len=16", "optim.warmup_steps=0",
             "optim.schedule=constant", "optim.learning_rate=1e-3", "data.name=text"]
    one = _cfg(preset, *extra, "mesh.data=1")
    batches = [_lm_batch(one, 0), _lm_batch(one, 1)]
    ref, ref_hist, _ = run_steps(one, batches, jax.devices()[:1])
    n = int(np.prod(mesh))
    cfg = _cfg(preset, *extra, f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.model={mesh[2]}")
    got, hist, _ = run_steps(cfg, batches, jax.devices()[:n])
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist], rtol=1e-5)
    a, b = params_numpy(ref), params_numpy(got)
    for key in a:  # one Adam step moves each weight by ~lr = 1e-3; 1e-5 is 1% of that
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("preset", ARCHS)
def test_vocab_tiling_trains_like_the_whole_logits(preset):
    """The loss in 3 pieces of a 16-token row (the last one padded), on a 2 x 2 x 2 mesh, with z-loss and label
    smoothing in the objective: the untiled single-device step's losses, accuracy and parameters."""
    extra = ["model.hidden_dropout=0.1", "train.batch_size=8", "data.seq_len=16", "optim.warmup_steps=0",
             "optim.schedule=constant", "optim.learning_rate=1e-3", "data.name=text", "model.z_loss=1e-3",
             "model.label_smoothing=0.1"]
    one = _cfg(preset, *extra, "mesh.data=1")
    batches = [_lm_batch(one, 0), _lm_batch(one, 1)]
    ref, ref_hist, _ = run_steps(one, batches, jax.devices()[:1])
    tiled = _cfg(preset, *extra, "model.vocab_tiling=3", "mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    got, hist, _ = run_steps(tiled, batches, jax.devices()[:8])
    for key in ("loss", "accuracy", "z_loss", "label_smoothing"):
        np.testing.assert_allclose([h[key] for h in hist], [h[key] for h in ref_hist], rtol=1e-5, err_msg=key)
    a, b = params_numpy(ref), params_numpy(got)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_vocab_tiling_is_refused_where_there_are_no_vocabulary_logits():
    with pytest.raises(ConfigError, match="model.vocab_tiling must be >= 1"):
        config.validate(_cfg("gpt-tiny", "model.vocab_tiling=0"), 1)
    with pytest.raises(ConfigError, match="model.vocab_tiling=32 cuts the sequence into more pieces than its "
                                          "data.seq_len=16 positions"):
        config.validate(_cfg("gpt-tiny", "model.vocab_tiling=32", "data.seq_len=16", "mesh.data=1"), 1)
    with pytest.raises(ConfigError, match="a token head has none"):
        config.validate(config.build(["model.preset=tiny", "model.vocab_tiling=4"]), 1)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_model(arch, tmp_path, rope=None, **extra):
    torch.manual_seed(0)
    if arch == "gpt2":
        c = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0, **extra)
        model = transformers.GPT2LMHeadModel(c)
    elif arch == "gemma":  # Gemma 1; transformers reads a released config.json's "gelu" as tanh's
        c = transformers.GemmaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0, hidden_act="gelu",
                                     rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **extra)
        model = transformers.GemmaForCausalLM(c)
    elif arch in ("gemma2", "gemma3"):  # a window of 4 on layers 1 and 3, all tokens on 2 and 4
        extra = {"num_hidden_layers": 4, "sliding_window": 4, "sliding_window_pattern": 2, "head_dim": 8,
                 "query_pre_attn_scalar": 6, **extra}
        plain = {"rope_type": "default", "rope_theta": 500.0}
        if arch == "gemma2":  # soft caps near the scores' and logits' size, so they bend them
            cls, extra = "Gemma2", {"attn_logit_softcapping": 0.002, "final_logit_softcapping": 0.3, **extra}
        else:  # its windowed layers rotate by their own base
            cls, rope = "Gemma3Text", rope or {"full_attention": plain,
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}
        c = getattr(transformers, f"{cls}Config")(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            rope_parameters=rope or plain, **extra)
        model = getattr(transformers, f"{cls[:6]}ForCausalLM")(c)
    else:  # llama, mistral, qwen2: one LLaMA-style config signature
        name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3"}[arch]
        c = getattr(transformers, f"{name}Config")(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
            rope_parameters=rope or {"rope_theta": 500.0, "rope_type": "default"}, **extra)
        model = getattr(transformers, f"{name}ForCausalLM")(c)
    with torch.no_grad():  # make biases and norms non-trivial, so the mapping is really tested
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / arch)
    return model, tmp_path / arch


def _torch_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                     attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()


def _equals_hf(model, theirs, ids) -> np.ndarray:
    """Our logits (returned) equal HF's on plain rows, and on a packed row its second document's equal HF's on
    that document alone."""
    b, t = ids.shape
    pos, seg = jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), jnp.int32)
    ours = np.asarray(model(ids, pos, seg))
    np.testing.assert_allclose(ours, _torch_logits(theirs, ids), atol=1e-5)
    docs = [list(np.asarray(ids[0, :4])), list(np.asarray(ids[1, :7]))]
    rows = packing.pack(docs, seq_len=11)
    packed = model(*(jnp.asarray(rows[k]) for k in ("input_ids", "positions", "segment_ids")))
    np.testing.assert_allclose(packed[0, 4:11], _torch_logits(theirs, [docs[1]])[0], atol=1e-5)
    return ours


def _exercised(spec, params, ids, ours, by=1e-3, **change) -> None:
    """The same weights under `change` give logits at least `by` away (10x or more the tolerance they are
    compared to HF's with): the setting changed is really exercised."""
    b, t = ids.shape
    other = nnx.merge(nnx.split(decoder.Decoder(dataclasses.replace(spec, **change), rngs=nnx.Rngs(params=0)))[0],
                      params)
    got = np.asarray(other(ids, jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), jnp.int32)))
    assert np.abs(got[:, 5:] - ours[:, 5:]).max() > by, change


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_parity_and_round_trip(arch, tmp_path):
    theirs, folder = _hf_model(arch, tmp_path)
    restored = run_lib.restore(folder, ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    spec = restored.run.spec
    assert spec.model.family == "decoder" and spec.model.arch == arch and spec.model.task == "lm"
    assert restored.tokenizer is None  # weights only: not the empty GPT-2 tokenizer transformers builds from config
    model = nnx.merge(restored.run.graphdef, restored.params)
    ids = _ids(3, 10, seed=3)
    pos, seg = jnp.broadcast_to(jnp.arange(10), (3, 10)), jnp.ones((3, 10), jnp.int32)
    np.testing.assert_allclose(model(ids, pos, seg), _torch_logits(theirs, ids), atol=1e-4)
    # right padding: HF's attention_mask vs our segment 0
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0
    seg_padded = jnp.asarray(mask, jnp.int32)
    ours = np.asarray(model(ids, pos, seg_padded))
    np.testing.assert_allclose(ours[1, :6], _torch_logits(theirs, ids, mask)[1, :6], atol=1e-4)
    # packed: the second document of a row equals HF on that document alone
    docs = [list(np.asarray(ids[0, :4])), list(np.asarray(ids[2, :7]))]
    rows = packing.pack(docs, seq_len=11)
    packed = model(*(jnp.asarray(rows[k]) for k in ("input_ids", "positions", "segment_ids")))
    np.testing.assert_allclose(packed[0, 4:11], _torch_logits(theirs, [docs[1]])[0], atol=1e-4)
    # export -> HF -> import is bit-identical
    out = hf.export(restored.params, spec.model, tmp_path / "export")
    again = run_lib.restore(out)
    a, b = (_flat(r.params) for r in (restored, again))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    reloaded = getattr(transformers, "GPT2LMHeadModel" if arch == "gpt2" else "LlamaForCausalLM").from_pretrained(out)
    np.testing.assert_allclose(_torch_logits(reloaded.eval(), ids), _torch_logits(theirs, ids), atol=1e-5)


def test_an_untied_gpt2_head_equals_hf_and_round_trips(tmp_path):
    """GPT2Config(tie_word_embeddings=False) keeps lm_head apart from wte: read, and written back, as such."""
    theirs, folder = _hf_model("gpt2", tmp_path, tie_word_embeddings=False)
    restored = run_lib.restore(folder)
    assert not restored.run.spec.model.tie_embeddings
    ids = _ids(3, 10, seed=3)
    _equals_hf(nnx.merge(restored.run.graphdef, restored.params), theirs, ids)
    out = hf.export(restored.params, restored.run.spec.model, tmp_path / "export")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert not reloaded.config.tie_word_embeddings
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-5)


@pytest.mark.parametrize("arch, extra", [("gpt2", {}), ("llama", {"head_dim": 16}), ("qwen3", {"attention_bias": True}),
                                         ("phi3", {"sliding_window": 4, "pad_token_id": 0}), ("gemma", {}), ("gemma2", {}),
                                         ("gemma3", {})])
def test_training_gradients_equal_pytorch(arch, extra, tmp_path):
    """What a training step computes, not only the forward pass: the loss and every parameter's gradient
    from steps.make_grad_fn (on a packed row with padding, so segments and ignored targets count) equal
    torch autograd on HF's own loss over the same documents, mapped through the HF table."""
    theirs, folder = _hf_model(arch, tmp_path, **extra)
    restored = run_lib.restore(folder)
    spec = restored.run.spec.model
    docs = [[int(t) for t in _ids(1, n, seed=n)[0]] for n in (9, 5)]
    rows = {k: jnp.asarray(v) for k, v in packing.pack(docs, seq_len=16).items()}  # 14 tokens + 2 of padding
    grad_fn = steps.make_grad_fn(restored.run.family, spec, restored.run.graphdef)
    sums, grads = jax.jit(grad_fn)(restored.params, rows, None, 1.0)
    theirs.zero_grad()
    total = sum(theirs(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss * (len(d) - 1) for d in docs)
    total.backward()
    assert float(sums["weight"]) == sum(len(d) - 1 for d in docs)
    assert float(sums["loss_sum"]) == pytest.approx(total.item(), rel=1e-5)
    flat = _flat(grads)  # HF's gradients under the table's names (Phi-3's fused tensors split)
    named = decoder.hf_unfuse({n: p.grad.numpy() for n, p in theirs.named_parameters()}, spec)
    key_map = decoder.hf_key_map(spec)
    assert len(key_map) == len(flat)
    for ours, (name, how) in key_map.items():
        if how.startswith("part:"):  # GPT-2's fused c_attn: our three projections side by side
            continue
        mine = hf.to_theirs(np.asarray(flat[ours]), how)
        np.testing.assert_allclose(mine, named[name].reshape(mine.shape), rtol=1e-3, atol=2e-5, err_msg=ours)
    if arch == "gpt2":
        for i in range(spec.num_layers):
            for part in ("kernel", "bias"):
                fused = np.concatenate([np.asarray(flat[f"layers.{i}.attention.{n}.{part}"]).reshape(
                    *(() if part == "bias" else (spec.hidden_size,)), -1) for n in ("query", "key", "value")], -1)
                hf_name = f"transformer.h.{i}.attn.c_attn.{'weight' if part == 'kernel' else 'bias'}"
                np.testing.assert_allclose(fused, named[hf_name], rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("arch, key", [("gpt2", "attn_pdrop"), ("llama", "attention_dropout"),
                                       ("gemma2", "attention_dropout")])
def test_attention_dropout_equals_pytorch_given_the_same_masks(arch, key, tmp_path, monkeypatch):
    """model.attention_dropout drops each head's attention probabilities where HF's eager attention does,
    with keys and values shared by a group of query heads (LLaMA, Gemma) or not (GPT-2): with torch's dropout
    handed the masks jaxbatch drew, a training step's loss and every gradient equal transformers'."""
    theirs, folder = _hf_model(arch, tmp_path, **{key: 0.3}, **({"resid_pdrop": 0.0, "embd_pdrop": 0.0}
                                                                 if arch == "gpt2" else {}))
    theirs = type(theirs).from_pretrained(folder, attn_implementation="eager").train()
    run = run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={folder}", "model.task=lm", "mesh.data=1",
                                                      "data.seq_len=16", "model.hidden_dropout=0",
                                                      "model.attention_dropout=0.3"])),
                        devices=jax.devices()[:1])
    spec = run.spec.model
    ids = _ids(1, 14, seed=4)
    batch = {k: jnp.asarray(v) for k, v in packing.pack([list(np.asarray(ids[0]))], seq_len=14).items()}
    drawn, pending = replay_dropout_masks(monkeypatch)
    grad_fn = steps.make_grad_fn(run.family, spec, run.graphdef)
    with jax.disable_jit():  # our masks are drawn eagerly, so they can be handed to torch
        sums, grads = grad_fn(run.state.params, batch, jax.random.key(1), 1.0)
    theirs.zero_grad()
    tokens = torch.tensor(np.asarray(ids), dtype=torch.long)
    loss = theirs(input_ids=tokens, labels=tokens).loss
    loss.backward()
    assert [m.shape for m in drawn] == [(1, 4, 14, 14)] * spec.num_layers and pending == []
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(loss.item(), rel=1e-5)
    named = decoder.hf_unfuse({n: p.grad.numpy() for n, p in theirs.named_parameters()}, spec)
    for ours, (name, how) in decoder.hf_key_map(spec).items():
        if not how.startswith("part:"):  # GPT-2's fused c_attn is compared in the test above
            mine = hf.to_theirs(np.asarray(_flat(grads)[ours]) / float(sums["weight"]), how)  # of HF's mean
            np.testing.assert_allclose(mine, named[name].reshape(mine.shape), rtol=1e-3, atol=2e-5, err_msg=ours)


SCALED_ROPE = {  # head_dim 8, theta 500: wavelengths 6.3, 30, 140, 664 against 64/4 and 64/1 exercise all
    # three llama3 branches (kept, blended, divided) at the 40 positions compared
    "linear": {"rope_theta": 500.0, "rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_theta": 500.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    # yarn: the ramp over the 4 frequencies is [0, 0.5, 1, 1] (kept, blended, divided), cos/sin x 1.139
    "yarn": {"rope_theta": 500.0, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("kind", sorted(SCALED_ROPE))
def test_scaled_rope_equals_hf_and_round_trips(kind, tmp_path):
    """LLaMA 3.1+ checkpoints ship `llama3` rotary scaling; long-context fine-tunes `linear`. Logits equal
    HF's at positions where the scaling matters, from transformers 5's `rope_parameters` and from the older
    `rope_scaling` + top-level `rope_theta` that hub configs still carry; export writes them back."""
    theirs, folder = _hf_model("llama", tmp_path, rope=SCALED_ROPE[kind])
    restored = run_lib.restore(folder)
    spec = restored.run.spec.model
    assert (spec.rope_type, spec.rope_factor, spec.rope_theta) == (kind, SCALED_ROPE[kind]["factor"], 500.0)
    model = nnx.merge(restored.run.graphdef, restored.params)
    ids = _ids(2, 40, seed=5)
    pos, seg = jnp.broadcast_to(jnp.arange(40), (2, 40)), jnp.ones((2, 40), jnp.int32)
    ours = np.asarray(model(ids, pos, seg))
    np.testing.assert_allclose(ours, _torch_logits(theirs, ids), atol=1e-5)
    plain = {"rope_theta": 500.0, "rope_type": "default"}  # the same weights (same seed) without the scaling
    unscaled = _torch_logits(_hf_model("llama", tmp_path / "plain", rope=plain)[0], ids)
    assert np.abs(ours[:, 20:] - unscaled[:, 20:]).max() > 5e-4  # 50x the tolerance: the scaling is exercised
    old = json.loads((folder / "config.json").read_text())
    params = old.pop("rope_parameters")
    old["rope_theta"] = params.pop("rope_theta")
    old["rope_scaling"] = dict(params, type=params.pop("rope_type"))
    (folder / "config.json").write_text(json.dumps(old))
    assert run_lib.restore(folder).run.spec.model == spec
    out = hf.export(restored.params, spec, tmp_path / "export")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-5)
    assert run_lib.restore(out).run.spec.model == dataclasses.replace(spec, pretrained=str(out))


@pytest.mark.parametrize("arch, extra, bias", [("mistral", {"sliding_window": 4}, "none"), ("qwen2", {}, "qkv"),
                                               ("qwen2", {"use_sliding_window": True, "sliding_window": 3,
                                                          "max_window_layers": 0}, "qkv"),
                                               ("llama", {"attention_bias": True, "mlp_bias": True}, "all"),
                                               ("qwen3", {"attention_bias": True}, "all"),
                                               ("qwen3", {"use_sliding_window": True, "sliding_window": 3,
                                                          "max_window_layers": 0}, "none")])
def test_mistral_qwen_and_biased_llama_equal_hf_and_round_trip(arch, extra, bias, tmp_path):
    """LLaMA-style checkpoints beside plain llama: mistral's sliding window (a token sees its 4 latest tokens,
    so 10 tokens exercise it), qwen2's query/key/value biases (and its window on every layer), llama's
    attention_bias (the output projection too) and mlp_bias, qwen3's query/key RMSNorms (with its biases or
    window). Logits equal HF's on plain and packed rows; export writes the same class back."""
    theirs, folder = _hf_model(arch, tmp_path, **extra)
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.attention_bias, spec.sliding_window, spec.mlp_bias) == (bias, extra.get("sliding_window", 0),
                                                                         extra.get("mlp_bias", False))
    assert spec.qk_norm == (arch == "qwen3")
    ids = _ids(2, 10, seed=6)
    ours = _equals_hf(nnx.merge(restored.run.graphdef, restored.params), theirs, ids)
    if spec.sliding_window:  # the window is really exercised: without it the later logits differ
        _exercised(spec, restored.params, ids, ours, sliding_window=0)
    out = hf.export(restored.params, spec, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model_type"] == arch
    reloaded = type(theirs).from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-6)
    assert run_lib.restore(out).run.spec.model == dataclasses.replace(spec, pretrained=str(out))


GEMMA = {  # what each generation's tiny checkpoint reads as, and what each exercised setting changes
    "gemma2": (dict(qk_norm=False, rope_local_theta=0.0, attention_softcap=0.002, logit_softcap=0.3),
               ({"attention_softcap": 0.0}, {"logit_softcap": 0.0})),
    "gemma3": (dict(qk_norm=True, rope_local_theta=50.0, attention_softcap=0.0, logit_softcap=0.0),
               ({"rope_local_theta": 500.0},)),
}


@pytest.mark.parametrize("arch", sorted(GEMMA))
def test_gemma_equals_hf_and_round_trips(arch, tmp_path):
    """Gemma 2's and 3's decoders: embeddings times sqrt(hidden), RMSNorms scaling by 1 + weight before and
    after attention and the MLP, scores over sqrt(query_pre_attn_scalar), a window on every other layer here;
    Gemma 2's tanh soft-capped scores and logits, Gemma 3's normalised queries and keys with each kind of layer
    rotating by its own base. Logits equal HF's on plain and packed rows, the window, the caps and the
    windowed layers' base are really exercised, export writes the same class back, and Gemma 3's older
    config.json layout (rope_local_base_freq, no layer_types) reads the same."""
    read_as, changes = GEMMA[arch]
    theirs, folder = _hf_model(arch, tmp_path)
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.arch, spec.sliding_window, spec.sliding_window_pattern, spec.rope_theta, spec.query_scale,
            spec.tie_embeddings) == ("gemma", 4, 2, 500.0, 6.0, True)
    assert {k: getattr(spec, k) for k in read_as} == read_as
    assert [decoder.windowed(spec, i) for i in range(4)] == [True, False, True, False]
    ids = _ids(2, 12, seed=7)
    ours = _equals_hf(nnx.merge(restored.run.graphdef, restored.params), theirs, ids)
    for change in ({"sliding_window": 0, "sliding_window_pattern": 0, "rope_local_theta": 0.0}, *changes):
        _exercised(spec, restored.params, ids, ours, **change)
    out = hf.export(restored.params, spec, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert (written["model_type"], written["layer_types"]) == (theirs.config.model_type,
                                                               ["sliding_attention", "full_attention"] * 2)
    reloaded = type(theirs).from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-6)
    assert run_lib.restore(out).run.spec.model == dataclasses.replace(spec, pretrained=str(out))
    if arch == "gemma2":
        return
    old = json.loads((folder / "config.json").read_text())
    rope = old.pop("rope_parameters")
    old.pop("layer_types")
    old.update(rope_theta=rope["full_attention"]["rope_theta"], rope_scaling=None, sliding_window_pattern=2,
               rope_local_base_freq=rope["sliding_attention"]["rope_theta"])
    (folder / "config.json").write_text(json.dumps(old))
    assert run_lib.restore(folder).run.spec.model == spec


def test_gemma1_equals_hf_and_round_trips(tmp_path):
    """Gemma 1's decoder: Gemma's scaled embeddings, 1 + weight RMSNorms and GELU-gated MLP in pre-norm blocks
    (model.block_norms=pre: no norm after attention or the MLP), every layer attending to all tokens, scores over
    sqrt(head_dim); the released config.json's hidden_act "gelu" is read as transformers reads it, the tanh
    approximation. Logits equal HF's on plain and packed rows, and export writes GemmaForCausalLM back."""
    theirs, folder = _hf_model("gemma", tmp_path)
    with torch.no_grad():  # MLP pre-activations of order 1, where exact and tanh GELU part, and a larger MLP output
        for name, p in theirs.named_parameters():
            p.mul_(10.0 if "mlp" in name else 1.0)
    theirs.save_pretrained(folder)
    released = json.loads((folder / "config.json").read_text())  # transformers writes tanh's name back
    (folder / "config.json").write_text(json.dumps({**released, "hidden_act": "gelu", "hidden_activation": None}))
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.arch, spec.block_norms, spec.activation, spec.sliding_window, spec.query_scale,
            decoder.head_dim(spec), spec.tie_embeddings) == ("gemma", "pre", "", 0, 0.0, 8, True)  # '': Gemma's own
    assert not decoder.sandwich(spec) and "attention_post_norm" not in restored.params["layers"][0]
    ids = _ids(2, 12, seed=8)
    ours = _equals_hf(nnx.merge(restored.run.graphdef, restored.params), theirs, ids)
    _exercised(spec, restored.params, ids, ours, by=1e-4, activation="gelu")  # the two GELUs differ by < 5e-4
    out = hf.export(restored.params, spec, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert (written["model_type"], written["hidden_act"]) == ("gemma", "gelu_pytorch_tanh")
    np.testing.assert_allclose(_torch_logits(transformers.GemmaForCausalLM.from_pretrained(out).eval(), ids),
                               _torch_logits(theirs, ids), atol=1e-6)
    assert run_lib.restore(out).run.spec.model == dataclasses.replace(spec, pretrained=str(out))
    with pytest.raises(ConfigError, match="a Gemma 1 block with exact .erf. GELU"):
        hf.export(restored.params, dataclasses.replace(spec, activation="gelu"), tmp_path / "erf")
    with pytest.raises(ConfigError, match="block_norms=sandwich is Gemma 2's and 3's block: use arch=gemma"):
        config.validate(_cfg("llama-tiny", "model.block_norms=sandwich"), 1)


@pytest.mark.parametrize("change, message", [
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention .an encoder. is not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"] * 2}, "layer_types .* is not a sliding window on all "
                                                                   "layers but every Nth")])
def test_gemma_layouts_it_lacks_are_refused(change, message, tmp_path):
    _, folder = _hf_model("gemma3", tmp_path)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **change}))
    with pytest.raises(CheckpointError, match=message):
        run_lib.restore(folder)


def test_phi3_reads_its_fused_tensors_and_exports_the_same_function(tmp_path):
    """Phi-3 is LLaMA's block with q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj` (split on load):
    logits equal HF's on plain and packed rows with its sliding window exercised, and the export (the LLaMA-style
    class holding that function: Mistral's, for the window) gives the same logits in transformers."""
    theirs, folder = _hf_model("phi3", tmp_path, sliding_window=4, pad_token_id=0)
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.arch, spec.sliding_window, spec.num_kv_heads, spec.tie_embeddings) == ("llama", 4, 2, False)
    ids = _ids(2, 12, seed=8)
    ours = _equals_hf(nnx.merge(restored.run.graphdef, restored.params), theirs, ids)
    _exercised(spec, restored.params, ids, ours, sliding_window=0)
    out = hf.export(restored.params, spec, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor 0.5 is not supported"),
    ({"intermediate_size": 48}, "phi3: tensor model.layers.0.mlp.gate_up_proj.weight has 128 rows; config.json's "
                                "shape needs 96")])
def test_phi3_layouts_it_cannot_hold_are_one_line(change, message, tmp_path):
    _, folder = _hf_model("phi3", tmp_path, pad_token_id=0)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **change}))
    with pytest.raises(CheckpointError, match=message):
        run_lib.restore(folder)


@pytest.mark.parametrize("arch, key, activation", [("gpt2", "activation_function", "relu"),
                                                   ("llama", "hidden_act", "gelu")])
def test_another_mlp_activation_equals_hf_and_round_trips(arch, key, activation, tmp_path):
    """A config.json's activation is run (GPT-2 with relu; a GELU-gated LLaMA-style MLP, as GeGLU models
    have) and written back on export; the architecture's default on the same weights gives other logits."""
    theirs, folder = _hf_model(arch, tmp_path, **{key: activation})
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert spec.activation == activation
    model = nnx.merge(restored.run.graphdef, restored.params)
    ids = _ids(2, 10, seed=7)
    pos, seg = jnp.broadcast_to(jnp.arange(10), (2, 10)), jnp.ones((2, 10), jnp.int32)
    ours = np.asarray(model(ids, pos, seg))
    np.testing.assert_allclose(ours, _torch_logits(theirs, ids), atol=1e-5)
    default = dataclasses.replace(spec, activation="")
    plain = nnx.merge(*nnx.split(decoder.Decoder(default, rngs=nnx.Rngs(params=0)))[:1], restored.params)
    assert np.abs(np.asarray(plain(ids, pos, seg)) - ours).max() > 1e-3
    out = hf.export(restored.params, spec, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())[key] == activation
    reloaded = type(theirs).from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-6)


def test_export_carries_the_tokenizers_special_ids_so_hf_generate_stops(tmp_path):
    import tokenizers

    _, folder = _hf_model("llama", tmp_path)
    restored = run_lib.restore(folder)
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "a", "b"])}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>")),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = hf.export(restored.params, restored.run.spec.model, tmp_path / "export", tok)
    written = json.loads((out / "config.json").read_text())
    assert (written["bos_token_id"], written["eos_token_id"], written["pad_token_id"]) == (1, 2, None)
    assert transformers.LlamaForCausalLM.from_pretrained(out).generation_config.eos_token_id == 2


# the classifier's paths: GPT-2's Conv1D trunk, LLaMA's, Phi-3's fused one (exported as LLaMA's), Gemma 3's class name
CLASSIFIERS = {"gpt2": "GPT2", "llama": "Llama", "phi3": "Phi3", "gemma3": "Gemma3Text"}


def _hf_classifier(arch, tmp_path, num_labels=3, pad=96, head="Sequence", **extra):
    """A random `*For{head}Classification` (head="QuestionAnswering": `*ForQuestionAnswering`) of `arch` (biases
    and norms made non-trivial) saved to a folder, and a word-level tokenizer of its 97 ids whose pad token is
    `pad`."""
    import tokenizers

    causal, _ = _hf_model(arch, tmp_path, **({"pad_token_id": pad} if arch == "phi3" else {}))  # its default: 32000
    c = causal.config
    c.num_labels, c.pad_token_id, c.id2label = num_labels, pad, {i: f"class{i}" for i in range(num_labels)}
    c.label2id = {v: k for k, v in c.id2label.items()}
    for key, value in extra.items():
        setattr(c, key, value)
    torch.manual_seed(1)
    stem = CLASSIFIERS.get(arch) or {"mistral": "Mistral", "qwen3": "Qwen3"}[arch]
    theirs = getattr(transformers, f"{stem}For{head}" + ("" if head == "QuestionAnswering" else "Classification"))(c)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    theirs.eval().save_pretrained(tmp_path / "classifier")
    vocab = {**{f"w{i}": i for i in range(97) if i != pad}, "<pad>": pad}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w1")),
        pad_token="<pad>", unk_token="w1")
    return theirs, tmp_path / "classifier", tok


def _assert_head_gradients_equal_hf(grads, theirs, spec) -> dict:
    """Every gradient of a classifier (jaxbatch's, through the HF table) equals the transformers model's after
    its backward pass (Phi-3's fused tensors split, a question-answering trunk's names read as the table's); GPT-2's
    fused c_attn is compared through the logits and the other tensors. Returns the table."""
    flat = _flat(grads)
    named = decoder.hf_unfuse({decoder.hf_normalize_name(n): p.grad.numpy() for n, p in theirs.named_parameters()},
                              spec)
    key_map = decoder.hf_key_map(spec)
    assert len(key_map) == len(flat)
    for mine, (name, how) in key_map.items():
        if how.startswith("part:"):
            continue
        got = hf.to_theirs(np.asarray(flat[mine]), how)
        np.testing.assert_allclose(got, named[name].reshape(got.shape), rtol=1e-3, atol=2e-5, err_msg=mine)
    return key_map


def _right_padded(lengths=(10, 6, 3), pad=96, seed=5):
    ids = np.asarray(np.random.default_rng(seed).integers(1, 96, (len(lengths), max(lengths))), np.int32)
    mask = (np.arange(ids.shape[1])[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, pad), mask


@pytest.mark.parametrize("arch", sorted(CLASSIFIERS))
def test_a_sequence_classifier_equals_hf_trains_like_it_and_round_trips(arch, tmp_path):
    """HF's *ForSequenceClassification (a `score` layer read at each row's last real token): read with its task
    and labels, its logits on right-padded rows and every training gradient equal transformers', and it
    exports back to the same class, bit-identically."""
    theirs, folder, tok = _hf_classifier(arch, tmp_path)
    restored = run_lib.restore(folder, ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.task, spec.num_labels, run_lib.label_names(restored.run.spec)) == (
        "sequence", 3, ["class0", "class1", "class2"])
    ids, mask = _right_padded()
    labels = np.asarray([2, 0, 1], np.int32)
    batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels))
    grad_fn = steps.make_grad_fn(restored.run.family, spec, restored.run.graphdef)
    sums, grads = jax.jit(grad_fn)(restored.params, batch, None, 1.0)
    theirs.zero_grad()
    out = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 labels=torch.tensor(labels, dtype=torch.long))
    (out.loss * 3).backward()
    ours = nnx.merge(restored.run.graphdef, restored.params).classify(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours), out.logits.detach().numpy(), atol=1e-5)
    assert float(sums["weight"]) == 3 and float(sums["loss_sum"]) == pytest.approx(out.loss.item() * 3, rel=1e-5)
    assert _assert_head_gradients_equal_hf(grads, theirs, spec)["score.kernel"] == ("score.weight", "t")
    exported = hf.export(restored.params, spec, tmp_path / "export", tok, run_lib.label_names(restored.run.spec))
    written = json.loads((exported / "config.json").read_text())
    cls = f"{CLASSIFIERS['llama' if arch == 'phi3' else arch]}ForSequenceClassification"  # Phi-3's function: LLaMA's
    assert written["architectures"] == [cls]
    assert (written["pad_token_id"], written["id2label"]["2"]) == (96, "class2")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert type(reloaded).__name__ == cls
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(again.numpy(), out.logits.detach().numpy(), atol=1e-6)
    back = _flat(run_lib.restore(exported).params)
    for key, value in _flat(restored.params).items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "phi3"])
def test_a_token_classifier_equals_hf_trains_like_it_and_round_trips(arch, tmp_path):
    """HF's *ForTokenClassification (dropout, then a linear layer with a bias at every position; GPT-2 names it
    `classifier`): read with its task and labels, its logits at every real token of right-padded rows and every
    training gradient equal transformers', and it exports back to the same class, bit-identically."""
    theirs, folder, tok = _hf_classifier(arch, tmp_path, num_labels=5, head="Token")
    restored = run_lib.restore(folder, ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.task, spec.num_labels, run_lib.label_names(restored.run.spec)[4]) == ("token", 5, "class4")
    ids, mask = _right_padded()
    labels = np.random.default_rng(0).integers(0, 5, ids.shape)
    labels = np.where((mask > 0) & (np.random.default_rng(1).random(ids.shape) < 0.8), labels, -100).astype(np.int32)
    batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels))
    sums, grads = jax.jit(steps.make_grad_fn(restored.run.family, spec, restored.run.graphdef))(
        restored.params, batch, None, 1.0)
    theirs.zero_grad()
    out = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 labels=torch.tensor(labels, dtype=torch.long))
    count = int((labels >= 0).sum())
    (out.loss * count).backward()
    ours = nnx.merge(restored.run.graphdef, restored.params).tag(jnp.asarray(ids), jnp.asarray(mask))
    real = mask > 0
    np.testing.assert_allclose(np.asarray(ours)[real], out.logits.detach().numpy()[real], atol=1e-5)
    assert float(sums["weight"]) == count
    assert float(sums["loss_sum"]) == pytest.approx(out.loss.item() * count, rel=1e-5)
    _assert_head_gradients_equal_hf(grads, theirs, spec)
    exported = hf.export(restored.params, spec, tmp_path / "export", tok, run_lib.label_names(restored.run.spec))
    cls = f"{CLASSIFIERS['llama' if arch == 'phi3' else arch]}ForTokenClassification"
    assert json.loads((exported / "config.json").read_text())["architectures"] == [cls]
    reloaded = transformers.AutoModelForTokenClassification.from_pretrained(exported).eval()
    assert type(reloaded).__name__ == cls and reloaded.config.id2label[4] == "class4"
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(again.numpy()[real], out.logits.detach().numpy()[real], atol=1e-6)
    back = _flat(run_lib.restore(exported).params)
    for key, value in _flat(restored.params).items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen3"])
def test_an_answer_span_head_equals_hf_trains_like_it_and_round_trips(arch, tmp_path):
    """HF's *ForQuestionAnswering (`qa_outputs` at every position, no dropout; the trunk under `transformer.` for
    GPT-2, LLaMA and Qwen3, `model.` for Mistral): read as the qa task, its start and end logits at every real
    token equal transformers', and on rows without padding (HF's softmax also spans padding) the loss and every
    gradient; it exports back to the same class, bit-identically."""
    theirs, folder, tok = _hf_classifier(arch, tmp_path, num_labels=2, head="QuestionAnswering")
    restored = run_lib.restore(folder, ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    spec = restored.run.spec.model
    assert (spec.task, spec.num_labels) == ("qa", 2)
    ids, mask = _right_padded()
    ours = np.asarray(nnx.merge(restored.run.graphdef, restored.params).tag(jnp.asarray(ids), jnp.asarray(mask)))
    with torch.no_grad():
        out = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    expected = torch.stack([out.start_logits, out.end_logits], -1).numpy()
    real = mask > 0
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5)
    full = np.asarray(np.random.default_rng(2).integers(1, 96, (4, 8)), np.int32)
    labels = np.sort(np.random.default_rng(3).integers(0, 8, (4, 2)), 1).astype(np.int32)
    batch = dict(input_ids=jnp.asarray(full), attention_mask=jnp.ones_like(full), labels=jnp.asarray(labels))
    sums, grads = jax.jit(steps.make_grad_fn(restored.run.family, spec, restored.run.graphdef))(
        restored.params, batch, None, 1.0)
    theirs.zero_grad()
    loss = theirs(input_ids=torch.tensor(full, dtype=torch.long), attention_mask=torch.ones(4, 8, dtype=torch.long),
                  start_positions=torch.tensor(labels[:, 0], dtype=torch.long),
                  end_positions=torch.tensor(labels[:, 1], dtype=torch.long)).loss
    (loss * 4).backward()
    assert float(sums["weight"]) == 4 and float(sums["loss_sum"]) == pytest.approx(loss.item() * 4, rel=1e-5)
    _assert_head_gradients_equal_hf(grads, theirs, spec)
    exported = hf.export(restored.params, spec, tmp_path / "export", tok)
    reloaded = transformers.AutoModelForQuestionAnswering.from_pretrained(exported).eval()
    assert type(reloaded).__name__ == type(theirs).__name__
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    np.testing.assert_array_equal(again.start_logits.numpy(), out.start_logits.numpy())
    np.testing.assert_array_equal(again.end_logits.numpy(), out.end_logits.numpy())


@pytest.mark.parametrize("problem, labels", [("regression", [[0.5], [-1.0], [2.0]]),
                                             ("multi_label_classification", [[1, 0, 1], [0, 0, 0], [0, 1, 1]])])
def test_a_decoder_head_of_float_targets_equals_hf(problem, labels, tmp_path):
    """A regression (one score) and a multi-label head read from config.json's problem_type, with HF's losses."""
    n = len(labels[0])
    theirs, folder, _ = _hf_classifier("llama", tmp_path, num_labels=n, problem_type=problem)
    restored = run_lib.restore(folder)
    spec = restored.run.spec.model
    assert (spec.task, spec.problem_type, spec.num_labels) == ("sequence", problem, n)
    ids, mask = _right_padded()
    target = np.asarray(labels, np.float32)[:, 0] if n == 1 else np.asarray(labels, np.float32)
    batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), labels=jnp.asarray(target))
    sums, _ = jax.jit(steps.make_grad_fn(restored.run.family, spec, restored.run.graphdef))(
        restored.params, batch, None, 1.0)
    with torch.no_grad():
        out = theirs(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     labels=torch.tensor(target))
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(out.loss.item(), rel=1e-5)


def test_a_gemma3_tagger_has_no_hf_class_and_exports_nothing(tmp_path):
    """transformers has Gemma 1's and 2's *ForTokenClassification but not Gemma 3's text model's."""
    cfg, model = _model("gemma3-tiny", "model.task=token", "model.num_labels=3")
    with pytest.raises(ConfigError, match="no token classifier of Gemma 3's text model"):
        hf.export(nnx.state(model, nnx.Param), cfg, tmp_path / "out")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("preset, setting", [("gpt-tiny", "model.sliding_window=4"),
                                             ("gpt-tiny", "model.attention_softcap=5"),
                                             ("llama-tiny", "model.query_scale=7"),
                                             ("llama-tiny", "model.sliding_window=4 model.sliding_window_pattern=2")])
def test_a_model_no_hf_class_holds_exports_nothing(preset, setting, tmp_path):
    """Exported as GPT-2 or LLaMA, the setting would be dropped: another function under the same weights."""
    cfg, model = _model(preset, *setting.split())
    with pytest.raises(config.ConfigError, match="no Hugging Face class"):
        hf.export(nnx.state(model, nnx.Param), cfg, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_heads_wider_than_hidden_over_heads_equal_hf(tmp_path):
    """head_dim set apart from hidden_size / num_heads (width-pruned LLaMA-style models ship so): 4 heads of
    16 over a hidden size of 32. Logits equal HF's; export writes head_dim back; the KV cache has its width."""
    theirs, folder = _hf_model("llama", tmp_path, head_dim=16)
    restored = run_lib.restore(folder, ["mesh.data=4", "mesh.model=2"])
    spec = restored.run.spec.model
    assert spec.head_dim == 16 and restored.params["layers"][0]["attention"]["query"]["kernel"].shape == (32, 4, 16)
    model = nnx.merge(restored.run.graphdef, restored.params)
    ids = _ids(2, 10, seed=4)
    pos, seg = jnp.broadcast_to(jnp.arange(10), (2, 10)), jnp.ones((2, 10), jnp.int32)
    np.testing.assert_allclose(model(ids, pos, seg), _torch_logits(theirs, ids), atol=1e-5)
    assert model.init_cache(1, 5)[0][0].shape == ((1, 2, 5, 16) if layers.cache_heads_first() else (1, 5, 2, 16))
    h, inter, kv, q = 32, 64, 2 * 16, 4 * 16
    assert decoder.train_flops_per_token(spec, 10) == 3 * (2 * (4 * h * q + 4 * h * kv + 6 * h * inter + 2 * 10 * q)
                                                           + 2 * h * 97)
    out = hf.export(restored.params, spec, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["head_dim"] == 16
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, ids), _torch_logits(theirs, ids), atol=1e-6)


@pytest.mark.parametrize("key, value", [("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False)])
def test_gpt2_attention_scalings_it_lacks_are_refused(key, value, tmp_path):
    """HF GPT-2 options that change the logits; read silently they gave a model that differs from HF's."""
    _, folder = _hf_model("gpt2", tmp_path)
    c = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(c, **{key: value})))
    with pytest.raises(CheckpointError, match=r"config.json: attention scores are scaled by 1/sqrt\(head_dim\) only"):
        run_lib.restore(folder)


def test_a_config_json_whose_heads_do_not_divide_names_the_file(tmp_path):
    """The head counts are the file's, so its path leads the message (it named model.* keys alone)."""
    _, folder = _hf_model("llama", tmp_path)
    c = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(c, num_key_value_heads=3)))
    with pytest.raises(CheckpointError, match=f"^{folder}/config.json: model.num_heads=4 is not divisible by "
                                              f"model.num_kv_heads=3"):
        run_lib.restore(folder)


@pytest.mark.parametrize("rope, message", [
    ({"rope_type": "dynamic", "factor": 4.0}, "rope_type 'dynamic' is not supported"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.7},
     "yarn with mscale, mscale_all_dim or truncate=false is not supported"),
    ({"rope_type": "llama3", "factor": 8.0}, "rope_type 'llama3' needs low_freq_factor, high_freq_factor, original_max"),
])
def test_unsupported_rope_is_one_line(rope, message, tmp_path):
    _, folder = _hf_model("llama", tmp_path)
    c = json.loads((folder / "config.json").read_text())
    c["rope_parameters"] = dict(rope, rope_theta=500.0)
    (folder / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=message):
        run_lib.restore(folder)


def test_sharded_and_half_precision_hf_folders_load(tmp_path):
    """How LLaMA-sized models come: bfloat16 tensors in shards named by model.safetensors.index.json (or
    pytorch_model.bin.index.json); read as float32 (the bf16 values exactly), equal to one unsharded file."""
    theirs, _ = _hf_model("llama", tmp_path)
    half = theirs.to(torch.bfloat16)
    half.save_pretrained(tmp_path / "one")
    half.save_pretrained(tmp_path / "shards", max_shard_size="8KB")
    bins = tmp_path / "bins"  # older hub repos: pytorch_model-*.bin shards (transformers 5 writes safetensors only)
    half.save_pretrained(bins)
    (bins / "model.safetensors").unlink()
    state = half.state_dict()
    weight_map = {k: f"pytorch_model-0000{i % 2 + 1}-of-00002.bin" for i, k in enumerate(state)}
    for name in set(weight_map.values()):
        torch.save({k: v for k, v in state.items() if weight_map[k] == name}, bins / name)
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 2
    one = _flat(run_lib.restore(tmp_path / "one").params)
    expected = {n: p.detach().float().numpy() for n, p in half.named_parameters()}
    assert one["final_norm.scale"].dtype == np.float32
    np.testing.assert_array_equal(one["final_norm.scale"], expected["model.norm.weight"])
    for folder in ("shards", "bins"):
        got = _flat(run_lib.restore(tmp_path / folder).params)
        for key in one:
            np.testing.assert_array_equal(got[key], one[key], err_msg=f"{folder} {key}")
    sorted((tmp_path / "shards").glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: names shard model-0000\d-of-"):
        run_lib.restore(tmp_path / "shards")


HUB_CONFIGS = {  # the shape keys of the hub config.json files the presets are named after
    "gpt2-124m": {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "n_ctx": 1024,
                  "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257},
    "llama-1b": {"model_type": "llama", "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,  # Llama-3.2-1B
                 "intermediate_size": 8192, "max_position_embeddings": 131072, "num_attention_heads": 32,
                 "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                 "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                 "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256},
    "llama-7b": {"model_type": "llama", "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
                 "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
                 "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                 "vocab_size": 32000},  # Llama-2-7b-hf
    "mistral-7b": {"model_type": "mistral", "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                   "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
                   "tie_word_embeddings": False, "vocab_size": 32000},  # Mistral-7B-v0.1
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
                     "max_position_embeddings": 32768, "max_window_layers": 24, "num_attention_heads": 14,
                     "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                     "sliding_window": 32768, "tie_word_embeddings": True, "use_sliding_window": False,
                     "vocab_size": 151936},  # Qwen2.5-0.5B: a window named but not used
    "phi3-mini": {"model_type": "phi3", "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
                  "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
                  "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
                  "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False,
                  "vocab_size": 32064},  # Phi-3-mini-4k-instruct
    "gemma-2b": {"model_type": "gemma", "attention_bias": False, "head_dim": 256, "hidden_act": "gelu",
                 "hidden_size": 2048, "intermediate_size": 16384, "max_position_embeddings": 8192,
                 "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
                 "rope_scaling": None, "rope_theta": 10000.0, "vocab_size": 256000},  # google/gemma-2b
    "gemma2-2b": {"model_type": "gemma2", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
                  "intermediate_size": 9216, "max_position_embeddings": 8192, "num_attention_heads": 8,
                  "num_hidden_layers": 26, "num_key_value_heads": 4, "query_pre_attn_scalar": 256,
                  "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000},
    "gemma3-270m": {"model_type": "gemma3_text", "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
                    "hidden_size": 640, "intermediate_size": 2048, "max_position_embeddings": 32768,
                    "num_attention_heads": 4, "num_hidden_layers": 18, "num_key_value_heads": 1,
                    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
                    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "vocab_size": 262144,
                    "final_logit_softcapping": None, "attn_logit_softcapping": None},  # as GGUF metadata lists it
    "qwen3-0.6b": {"model_type": "qwen3", "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
                   "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960,
                   "max_window_layers": 28, "num_attention_heads": 16, "num_hidden_layers": 28,
                   "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
                   "sliding_window": None, "tie_word_embeddings": True, "use_sliding_window": False,
                   "vocab_size": 151936},  # Qwen3-0.6B: heads 16 x 128 over a hidden size of 1024
}


@pytest.mark.parametrize("preset", sorted(HUB_CONFIGS))
def test_presets_are_the_shapes_of_the_checkpoints_they_are_named_after(preset, tmp_path):
    """`model.preset=llama-1b model.pretrained=<Llama-3.2-1B>` must load: a named preset has to agree with
    the checkpoint's config.json on every shape field (rotary scaling included), or it is refused."""
    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIGS[preset]))
    cfg = config.build([f"model.preset={preset}"]).model
    assert hf.configure(cfg, tmp_path) == dataclasses.replace(cfg, task="lm")


def test_flops_count_causal_half_and_swiglu():
    gpt = _cfg("gpt-tiny").model
    h, inter, t = 32, 64, 16
    expected = 3 * (2 * (4 * h * h + 4 * h * h + 4 * h * inter + 2 * t * h) + 2 * h * 97)
    assert decoder.train_flops_per_token(gpt, t) == expected
    llama = _cfg("llama-tiny", "model.num_kv_heads=2").model
    kv = 2 * 8
    assert decoder.train_flops_per_token(llama, t) == 3 * (2 * (4 * h * h + 4 * h * kv + 6 * h * inter + 2 * t * h)
                                                           + 2 * h * 97)
    # a window of 4 over 16 queries: (1 + 2 + 3 + 4 x 13) / 16 = 3.6 keys each, W - W^2/2T = 3.5 as counted
    windowed = _cfg("llama-tiny", "model.num_kv_heads=2", "model.sliding_window=4").model
    assert decoder.train_flops_per_token(windowed, t) == 3 * (2 * (4 * h * h + 4 * h * kv + 6 * h * inter + 4 * 3.5 * h)
                                                              + 2 * h * 97)
    assert decoder.train_flops_per_token(windowed, 4) == decoder.train_flops_per_token(llama, 4)  # W >= T: causal
