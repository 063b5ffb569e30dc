import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch import config
from jaxbatch.models.bert import BertClassifier


def _model(task="token", num_labels=5):
    cfg = config.build(["model.preset=tiny", f"model.task={task}", f"model.num_labels={num_labels}"]).model
    return cfg, BertClassifier(cfg, rngs=nnx.Rngs(params=0))


def test_shapes_and_logical_axes():
    cfg, model = _model()
    ids = jnp.ones((3, 10), jnp.int32)
    assert model(ids, jnp.ones_like(ids)).shape == (3, 10, 5)
    _, seq = _model("sequence", 1)
    assert seq(ids, jnp.ones_like(ids)).shape == (3, 1)
    for path, var in jax.tree_util.tree_leaves_with_path(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable)):
        assert len(var.get_metadata()["logical_axes"]) == var[...].ndim, path


def test_padding_does_not_change_real_positions():
    _, model = _model()
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 512, (2, 8)), jnp.int32)
    short = model(ids, jnp.ones_like(ids))
    padded_ids = jnp.concatenate([ids, jnp.zeros((2, 5), jnp.int32)], 1)
    mask = jnp.concatenate([jnp.ones((2, 8), jnp.int32), jnp.zeros((2, 5), jnp.int32)], 1)
    np.testing.assert_allclose(model(padded_ids, mask)[:, :8], short, atol=1e-5)


def test_dropout_uses_explicit_rng():
    _, model = _model()
    ids = jnp.ones((2, 6), jnp.int32)
    a = model(ids, jnp.ones_like(ids), deterministic=False, rngs=nnx.Rngs(dropout=1))
    b = model(ids, jnp.ones_like(ids), deterministic=False, rngs=nnx.Rngs(dropout=1))
    c = model(ids, jnp.ones_like(ids), deterministic=False, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_attention_dropout_is_on_in_training_only():
    cfg = config.build(["model.preset=tiny", "model.num_labels=5", "model.attention_dropout=0.3",
                        "model.hidden_dropout=0"]).model
    dropping = BertClassifier(cfg, rngs=nnx.Rngs(params=0))
    _, plain = _model()
    ids = jnp.asarray(np.random.default_rng(1).integers(5, 512, (2, 9)), jnp.int32)
    np.testing.assert_array_equal(dropping(ids, jnp.ones_like(ids)), plain(ids, jnp.ones_like(ids)))
    trained = [dropping(ids, jnp.ones_like(ids), deterministic=False, rngs=nnx.Rngs(dropout=s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(trained[0], trained[1])
    assert np.abs(trained[0] - plain(ids, jnp.ones_like(ids))).max() > 1e-3 and not np.allclose(*trained[1:])


def test_tokenizer_from_folder_word_list_or_saved(tmp_path):
    import pytest

    from jaxbatch import hf
    from jaxbatch.errors import CheckpointError
    from jaxbatch.models import bert

    with pytest.raises(CheckpointError, match="neither vocab.txt nor tokenizer.json"):
        bert.tokenizer(tmp_path)
    original = bert.tokenizer(hf.resolve("minilm-l6"))
    original.save_pretrained(str(tmp_path))  # transformers 5 writes tokenizer.json only
    again = bert.tokenizer(tmp_path)
    text = ["Wolfsburg", "is", "in", "Lower", "Saxony"]
    assert again(text, is_split_into_words=True)["input_ids"] == original(text, is_split_into_words=True)["input_ids"]
