"""ALBERT's differences from BERT: one layer's parameters run at every depth, narrower embeddings projected
up, no dropout on the MLP's output (parity with transformers: tests/test_hf.py); its layouts and presets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxbatch import config, hf
from jaxbatch.errors import CheckpointError
from jaxbatch.models import albert


def test_one_layer_runs_at_every_depth():
    cfg = config.build(["model.preset=albert-tiny"]).model
    model = albert.build(cfg, rngs=nnx.Rngs(params=0), dtype=jnp.float32)
    assert len(model.encoder.layers) == 1 and cfg.num_layers == 3
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 512, (2, 9)), jnp.int32)
    once = albert.build(config.build(["model.preset=albert-tiny", "model.num_layers=1"]).model,
                        rngs=nnx.Rngs(params=0), dtype=jnp.float32)
    nnx.update(once, nnx.state(model, nnx.Param))  # the same parameters, run once instead of three times
    assert np.abs(np.asarray(model(ids, jnp.ones_like(ids))) - np.asarray(once(ids, jnp.ones_like(ids)))).max() > 1e-3
    scanned = albert.build(config.replace(config.build(["model.preset=albert-tiny"]), model__scan_layers=True).model,
                           rngs=nnx.Rngs(params=0), dtype=jnp.float32)
    loss = lambda m: m(ids, jnp.ones_like(ids)).sum()  # noqa: E731
    grads = [nnx.grad(loss)(m) for m in (model, scanned)]
    for a, b in zip(jax.tree.leaves(nnx.state(grads[0])), jax.tree.leaves(nnx.state(grads[1]))):
        # float32 sums in another order: within 1e-5 of the tensor's largest entry (a misplaced layer is O(1) off)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(a).max())))


def test_training_with_dropout_equals_pytorch_given_the_same_masks(tmp_path, monkeypatch):
    """Dropout where HF's ALBERT has it (embeddings, attention output, the classifier's input; not the MLP's
    output): with torch's dropout handed the masks jaxbatch drew, a training step's loss and every gradient
    equal transformers' in training mode."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from conftest import assert_gradients_equal_torch, replay_dropout_masks
    from jaxbatch import run as run_lib

    torch.manual_seed(5)
    transformers.AlbertForTokenClassification(transformers.AlbertConfig(
        vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=20, num_labels=3, hidden_dropout_prob=0.2,
        classifier_dropout_prob=0.2)).save_pretrained(tmp_path / "in")
    cfg = config.build([f"model.pretrained={tmp_path / 'in'}", "model.hidden_dropout=0.2", "mesh.data=1",
                        "data.seq_len=16"])
    run = run_lib.setup(run_lib.resolve(cfg), devices=jax.devices()[:1])
    ids = np.random.default_rng(2).integers(5, 99, (4, 10))
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    labels = np.where(mask == 1, np.random.default_rng(3).integers(0, 3, ids.shape), -100).astype(np.int32)
    drawn, pending = replay_dropout_masks(monkeypatch)
    theirs = transformers.AlbertForTokenClassification.from_pretrained(tmp_path / "in",
                                                                        attn_implementation="eager").train()
    with jax.disable_jit():
        assert_gradients_equal_torch(albert.FAMILY, run.spec.model, run.graphdef, run.state.params,
                                     {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                                      "labels": labels}, theirs, rng=jax.random.key(0), input_ids=ids,
                                     attention_mask=mask)
    assert len(drawn) == 1 + 2 + 1 and pending == []  # embeddings, each layer's attention output, the classifier


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_groups": 2}, "num_hidden_groups=2, inner_group_num=1: only one group of one shared layer"),
    ({"inner_group_num": 2}, "num_hidden_groups=1, inner_group_num=2"),
    ({"embedding_size": 64}, "embedding_size equals hidden_size")])
def test_layouts_it_lacks_are_one_line(change, message, tmp_path):
    tree = {"model_type": "albert", "architectures": ["AlbertForTokenClassification"], "vocab_size": 99,
            "embedding_size": 16, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "max_position_embeddings": 32, "type_vocab_size": 2, **change}
    (tmp_path / "config.json").write_text(json.dumps(tree))
    with pytest.raises(CheckpointError, match=message):
        hf.configure(config.build(["model.preset=custom", "model.family=albert"]).model, tmp_path)


def test_presets_are_the_shapes_of_the_checkpoints_they_are_named_after(tmp_path):
    """albert-base-v2's config.json (its shape fields, as published) reads as the preset."""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "albert", "architectures": ["AlbertForMaskedLM"], "attention_probs_dropout_prob": 0,
        "embedding_size": 128, "hidden_act": "gelu_new", "hidden_dropout_prob": 0, "hidden_size": 768,
        "intermediate_size": 3072, "max_position_embeddings": 512, "num_attention_heads": 12,
        "num_hidden_groups": 1, "num_hidden_layers": 12, "inner_group_num": 1, "type_vocab_size": 2,
        "vocab_size": 30000, "layer_norm_eps": 1e-12}))
    cfg = config.build(["model.preset=albert-base-v2"]).model
    got = hf.configure(cfg, tmp_path)
    assert (got.embedding_size, got.hidden_size, got.activation) == (128, 768, "gelu_new")
