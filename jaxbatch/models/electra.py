"""The ELECTRA family (its discriminators: the checkpoints fine-tuned for classification): BERT's encoder
(models/bert.py) whose embeddings may be narrower than the hidden size and are then projected up
(`model.embedding_size`), under the 'electra.' prefix, numerically matching Hugging Face's
`ElectraFor{Token,Sequence}Classification`. Its sequence head drops out [CLS], applies dense + GELU (not
BERT's tanh), drops out again and projects; its tokenizer is BERT's word pieces."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxbatch import models
from jaxbatch.models import bert

PRESETS = {
    "electra-tiny": dict(vocab_size=512, embedding_size=32, hidden_size=64, num_layers=2, num_heads=4,
                         intermediate_size=256, max_position_embeddings=128),
    "electra-small": dict(vocab_size=30522, embedding_size=128, hidden_size=256, num_layers=12, num_heads=4,
                          intermediate_size=1024, max_position_embeddings=512),
    "electra-base": dict(vocab_size=30522, embedding_size=768, hidden_size=768, num_layers=12, num_heads=12,
                         intermediate_size=3072, max_position_embeddings=512),
}
VARIANT = bert.Variant(pooler_activation="gelu", dropout_before_pooler=True, lm_activation="gelu")


def build(cfg, *, rngs: nnx.Rngs, dtype) -> bert.BertClassifier:
    return bert.BertClassifier(cfg, rngs=rngs, dtype=dtype, variant=VARIANT)


def train_flops_per_token(cfg, seq_len: int) -> float:
    """BERT's count plus the embedding projection's 2 x embedding_size x hidden_size, three times."""
    e = cfg.embedding_size or cfg.hidden_size
    return bert.train_flops_per_token(cfg, seq_len) + (3.0 * 2 * e * cfg.hidden_size if e != cfg.hidden_size else 0)


def validate(cfg, seq_len: int, model_axis: int) -> None:
    bert.validate(dataclasses.replace(cfg, embedding_size=0), seq_len, model_axis)


def describe(cfg) -> str:
    return f"ELECTRA {cfg.preset} ({bert.head(cfg)})"


# ---- Hugging Face conversion table: BERT's under 'electra.', the projection, RoBERTa-style head names -----

def hf_configure(cfg, hf: dict):
    shaped = bert.hf_configure(cfg, hf)
    embedding_size = hf.get("embedding_size", shaped.hidden_size)
    models.check_shape(cfg, {"embedding_size": embedding_size})
    return dataclasses.replace(shaped, embedding_size=embedding_size)


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    m = bert.hf_key_map(cfg)
    if (cfg.embedding_size or cfg.hidden_size) != cfg.hidden_size:
        m.update({"encoder.embeddings_project.kernel": ("embeddings_project.weight", "t"),
                  "encoder.embeddings_project.bias": ("embeddings_project.bias", "copy")})
    return {**m, **bert.hf_head_map(cfg),
            **bert.lm_head_map(cfg, "generator_", "predictions.dense", "predictions.LayerNorm", "lm_head.bias")}


hf_normalize_name, hf_tensor_name = bert.hf_prefixed("electra")


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers, the pretraining heads of a base checkpoint (the discriminator's; a generator's masked-LM head
    under another task), and that head's decoder weight (the word embeddings)."""
    return (name in ("embeddings.position_ids", "embeddings.token_type_ids")
            or name.startswith("discriminator_predictions.")
            or bert.lm_head_unused(name, cfg, "generator_", "generator_lm_head.weight"))


def hf_config(cfg, label_names: list[str] | None = None) -> dict:
    out = bert.hf_config(cfg, label_names)
    return {**out, "architectures": [bert.hf_architecture("Electra", cfg)], "model_type": "electra",
            "embedding_size": cfg.embedding_size or cfg.hidden_size, "classifier_dropout": None}


FAMILY = models.register(dataclasses.replace(
    bert.FAMILY, name="electra", presets=PRESETS, build=build, train_flops_per_token=train_flops_per_token,
    validate=validate, describe=describe,
    hf=models.HfMapping(model_types=("electra",), key_map=hf_key_map, configure=hf_configure, hf_config=hf_config,
                        tensor_name=hf_tensor_name, expected_unused=hf_expected_unused,
                        normalize_name=hf_normalize_name)))
