"""ELECTRA's difference from BERT: embeddings narrower than the hidden size, projected up (parity with
transformers: tests/test_hf.py); only ELECTRA's family takes them."""

import pytest
from flax import nnx

from jaxbatch import config, run as run_lib
from jaxbatch.models import bert, electra


def test_narrow_embeddings_are_projected_and_counted():
    cfg = config.build(["model.preset=electra-tiny"]).model
    model = electra.build(cfg, rngs=nnx.Rngs(params=0), dtype="float32")
    params = nnx.state(model, nnx.Param)["encoder"]
    assert params["word_embeddings"]["embedding"].shape == (512, 32)
    kernel = params["embeddings_project"]["kernel"]
    assert kernel.shape == (32, 64) and kernel.logical_axes == (None, "embed")
    assert model.encoder.embeddings_norm.scale.shape == (32,)
    flops = electra.train_flops_per_token(cfg, 16) - bert.train_flops_per_token(cfg, 16)
    assert flops == 3 * 2 * 32 * 64


def test_only_electra_projects_its_embeddings():
    with pytest.raises(config.ConfigError, match="model.embedding_size=32: this family's embeddings are hidden_size"):
        run_lib.setup(config.build(["model.preset=tiny", "model.embedding_size=32", "data.name=synthetic_sst"]),
                      abstract=True)
    assert run_lib.setup(config.build(["model.preset=electra-tiny", "data.name=synthetic_sst"]), abstract=True)
