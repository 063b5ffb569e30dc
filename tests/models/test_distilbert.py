"""DistilBERT's differences from BERT: no token types, a ReLU sequence head, its config.json's names (parity
with transformers: tests/test_hf.py)."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxbatch import config, hf, run as run_lib
from jaxbatch.models import bert, distilbert


def test_no_token_type_table_and_a_relu_sequence_head():
    cfg = config.build(["model.preset=distilbert-tiny", "model.task=sequence", "model.num_labels=3"]).model
    ours = distilbert.build(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32)
    assert ours.encoder.token_type_embeddings is None
    assert "token_type_embeddings" not in {str(k) for k in nnx.state(ours, nnx.Param)["encoder"]}
    with_tanh = bert.BertClassifier(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32)
    nnx.update(with_tanh, nnx.state(ours, nnx.Param))
    ids, mask = np.arange(5, 21).reshape(2, 8), np.ones((2, 8), np.int32)
    pooled = ours.pooler(ours.encoder(ids, mask)[:, 0])
    np.testing.assert_allclose(ours(ids, mask), ours.classifier(np.maximum(pooled, 0)), rtol=1e-6)
    assert np.abs(np.asarray(ours(ids, mask)) - np.asarray(with_tanh(ids, mask))).max() > 1e-3


@pytest.mark.parametrize("change, message", [
    ({"sinusoidal_pos_embds": True}, "sinusoidal_pos_embds .fixed, untrained positions. is not supported"),
    ({"n_heads": None}, "no 'n_heads', which a distilbert config needs"),
    ({"activation": "mish"}, "activation 'mish' is not supported"),
])
def test_a_config_json_jaxbatch_cannot_run_is_one_line_naming_its_key(change, message, tmp_path):
    tree = {"model_type": "distilbert", "architectures": ["DistilBertForTokenClassification"], "vocab_size": 99,
            "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 40,
            "activation": "gelu", "sinusoidal_pos_embds": False, **change}
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in tree.items() if v is not None}))
    with pytest.raises(hf.CheckpointError, match=f"^{tmp_path}/config.json: {message}"):
        run_lib.hf_spec(tmp_path)
