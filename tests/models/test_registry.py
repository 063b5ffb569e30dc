"""A model family is a plug-in: one defined here, outside jaxbatch/, trains through the unchanged core."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import dotted, params_numpy, tiny_config
from jaxbatch import config, losses, models, train
from jaxbatch.errors import ConfigError
from jaxbatch.mesh import constrain
from jaxbatch.models.layers import Dense, Embed, LayerNorm


class MixerTagger(nnx.Module):
    """A token tagger with no attention: embeddings, one residual MLP over features, a label head."""

    def __init__(self, cfg, *, rngs, dtype):
        h = cfg.hidden_size
        self.embed = Embed(cfg.vocab_size, h, ("vocab", "embed"), rngs=rngs, dtype=dtype)
        self.up = Dense((h,), (cfg.intermediate_size,), ("embed",), ("mlp",), rngs=rngs, dtype=dtype)
        self.down = Dense((cfg.intermediate_size,), (h,), ("mlp",), ("embed",), rngs=rngs, dtype=dtype)
        self.norm = LayerNorm(h, 1e-6, dtype=dtype)
        self.head = Dense((h,), (cfg.num_labels,), ("embed",), ("labels",), rngs=rngs, dtype=dtype)

    def __call__(self, ids):
        x = self.embed(ids)
        x = self.norm(x + self.down(constrain(jax.nn.relu(self.up(x)), ("batch", "length", "mlp"))))
        return self.head(x).astype(jnp.float32)


def _tokenizer(source):
    from transformers import BertTokenizer  # any transformers tokenizer with [CLS]/[SEP]/[PAD] will do

    return BertTokenizer(vocab={w: i for i, w in enumerate(source)}, do_lower_case=False)


def _validate(cfg, seq_len, model_axis):
    if cfg.intermediate_size % model_axis:
        raise ConfigError(f"model.intermediate_size={cfg.intermediate_size} is not divisible by mesh.model")


MIXER = models.Family(
    name="mixer", presets={"mixer-tiny": dict(vocab_size=512, hidden_size=32, intermediate_size=64)},
    build=MixerTagger, forward=lambda model, batch, deterministic, rngs: model(batch["input_ids"]),
    loss_sums=lambda logits, batch, cfg: losses.classification_sums(logits, batch["labels"]),
    batch_shapes=lambda cfg, b, t: {"input_ids": (b, t), "attention_mask": (b, t), "labels": (b, t)},
    train_flops_per_token=lambda cfg, t: 6.0 * (2 * cfg.hidden_size * cfg.intermediate_size),
    validate=_validate, describe=lambda cfg: f"mixer tagger {cfg.hidden_size} wide", tokenizer=_tokenizer)


@pytest.fixture(scope="module", autouse=True)
def registered():
    models.register(MIXER)
    yield
    models._FAMILIES.pop("mixer")


def test_a_family_defined_outside_the_package_trains_on_a_2x2x2_mesh(tmp_path):
    args = ["model.preset=mixer-tiny", "train.steps=30", "train.eval_every=30", "train.log_every=10",
            "train.batch_size=32", "optim.learning_rate=1e-2", "data.seq_len=32", f"train.run_dir={tmp_path}"]
    result = train.train(tiny_config(*args, "mesh.data=2", "mesh.fsdp=2", "mesh.model=2"))
    assert result.spec.model.family == "mixer" and result.spec.model.num_labels == 9
    losses_ = [r["loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert losses_[-1] < 0.5 * losses_[0]
    assert result.summary["final_eval"]["entities"]["micro avg"]["support"] > 100
    up = result.state.params["up"]["kernel"]
    assert up[...].sharding.shard_shape(up.shape) == (16, 32)  # embed over fsdp=2, mlp over model=2


def test_sharded_equals_single_device_for_the_plugged_family(tmp_path):
    """The core shards (FSDP + TP) a model it has never seen, equal to replicated data parallel."""
    args = ["model.preset=mixer-tiny", "train.steps=3", "train.eval_every=0", "train.batch_size=16",
            "data.seq_len=16", "data.num_train=64"]
    a = train.train(tiny_config(*args, "mesh.data=2", "mesh.fsdp=2", "mesh.model=2", f"train.run_dir={tmp_path / 'a'}"))
    b = train.train(tiny_config(*args, "mesh.data=8", f"train.run_dir={tmp_path / 'b'}"))  # replicated params
    pa, pb = params_numpy(a.state), params_numpy(b.state)
    assert sorted(pa) == ["down.bias", "down.kernel", "embed.embedding", "head.bias", "head.kernel", "norm.bias",
                          "norm.scale", "up.bias", "up.kernel"]
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_presets_pick_the_family_and_mistakes_are_named():
    assert config.build(["model.preset=mixer-tiny"]).model.family == "mixer"
    assert config.build(["model.preset=tiny"]).model.family == "bert"
    with pytest.raises(ConfigError, match="belongs to family 'mixer', not model.family='bert'"):
        config.build(["model.preset=mixer-tiny", "model.family=bert"])
    with pytest.raises(ConfigError, match="model.family='nope' is unknown"):
        config.build(["model.preset=custom", "model.family=nope"])
    with pytest.raises(ValueError, match="taken by another family"):
        models.register(models.Family(**{**MIXER.__dict__, "name": "other"}))


def test_weight_decay_follows_parameter_metadata_not_names():
    from jaxbatch import optim, state as state_lib

    _, params = state_lib.abstract_model(config.build(["model.preset=mixer-tiny"]).model, "fp32")
    mask = {dotted(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    assert mask == {"embed.embedding": True, "up.kernel": True, "down.kernel": True, "head.kernel": True,
                    "up.bias": False, "down.bias": False, "head.bias": False, "norm.scale": False, "norm.bias": False}


def test_the_core_never_names_a_model():
    """Outside models/ only the registry's own registration line may name a built-in family."""
    root = Path(__file__).resolve().parents[2] / "jaxbatch"
    hits = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py") if p.parent.name != "models"
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"Bert|BERT|GPT|Llama|LLaMA", line)]
    assert hits == []


@pytest.mark.parametrize("overrides", [
    ("model.preset=tiny", "model.num_layers=1", "train.batch_size=16", "data.seq_len=128"),
    ("model.preset=tiny", "model.task=sequence", "model.num_labels=2", "train.batch_size=32", "data.seq_len=32"),
    ("model.preset=gpt-tiny", "model.task=lm", "data.name=text", "model.vocab_size=65", "train.batch_size=8",
     "data.seq_len=64")])
def test_the_per_token_estimate_follows_xlas_temporaries(overrides):
    """distributed.wants_one_arena's estimate of a step's temporaries, before JAX starts, against XLA's buffer
    assignment of the compiled step (fp32: 4 bytes a float)."""
    from jaxbatch import memory

    cfg = config.build(["optim.name=adamw", *overrides])
    measured = memory.step_memory(cfg, 1, devices=jax.devices()[:1]).temp
    estimate = 4 * models.train_temp_floats(cfg.model, cfg.train.batch_size * cfg.data.seq_len, cfg.data.seq_len)
    assert 0.6 < estimate / measured < 1.6, (estimate, measured)
