"""The DistilBERT family: BERT's encoder (models/bert.py) without token types, under DistilBERT's tensor names,
numerically matching Hugging Face's `DistilBertFor{Token,Sequence}Classification`. Its sequence head is a
dense layer with ReLU on [CLS] (`pre_classifier`, kept under BERT's name `pooler`), dropout, then the
classifier; its tokenizer is BERT's word pieces."""

from __future__ import annotations

import dataclasses
import re

from flax import nnx

from jaxbatch import models
from jaxbatch.errors import CheckpointError
from jaxbatch.models import bert

PRESETS = {
    "distilbert-tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                            max_position_embeddings=128, type_vocab_size=0),
    "distilbert-base": dict(vocab_size=30522, hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072,
                            max_position_embeddings=512, type_vocab_size=0),
}


def build(cfg, *, rngs: nnx.Rngs, dtype) -> bert.BertClassifier:
    """BERT's classifier whose sequence head is ReLU(pre_classifier([CLS])), dropout, classifier."""
    return bert.BertClassifier(cfg, rngs=rngs, dtype=dtype, variant=bert.Variant(pooler_activation="relu",
                                                                                   qa_dropout=True))


def describe(cfg) -> str:
    return f"DistilBERT {cfg.preset} ({bert.head(cfg)})"


# ---- Hugging Face conversion table ----------------------------------------------------------------------

SHAPE_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "dim", "num_layers": "n_layers", "num_heads": "n_heads",
                "intermediate_size": "hidden_dim", "max_position_embeddings": "max_position_embeddings"}


def hf_configure(cfg, hf: dict):
    """The shape from a DistilBERT config.json (LayerNorm eps is fixed at 1e-12 there); a fine-tuned head sets
    the task and label count as for BERT."""
    activation = models.hf_activation(hf, "activation", bert.ACTIVATION) or bert.ACTIVATION
    if hf.get("sinusoidal_pos_embds"):
        raise CheckpointError("config.json: sinusoidal_pos_embds (fixed, untrained positions) is not supported; "
                              "jaxbatch's DistilBERT learns its positions")
    return bert.hf_configure(cfg, {**hf, **{bert.SHAPE_FIELDS[f]: hf[k] for f, k in SHAPE_FIELDS.items()},
                                   "type_vocab_size": 0, "hidden_act": activation, "layer_norm_eps": 1e-12})


_RENAMES = (  # BERT's tensor names -> DistilBERT's, in order
    (r"^encoder\.layer\.", "transformer.layer."), (r"attention\.self\.query", "attention.q_lin"),
    (r"attention\.self\.key", "attention.k_lin"), (r"attention\.self\.value", "attention.v_lin"),
    (r"attention\.output\.dense", "attention.out_lin"), (r"attention\.output\.LayerNorm", "sa_layer_norm"),
    (r"intermediate\.dense", "ffn.lin1"), (r"(\d)\.output\.dense", r"\1.ffn.lin2"),
    (r"(\d)\.output\.LayerNorm", r"\1.output_layer_norm"), (r"^pooler\.dense", "pre_classifier"),
)


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    """BERT's table (models/bert.py) under DistilBERT's names, without token types."""
    def rename(name: str) -> str:
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        return name

    return {**{ours: (rename(theirs), how) for ours, (theirs, how) in bert.hf_key_map(cfg).items()
               if "token_type" not in ours},
            **bert.lm_head_map(cfg, "vocab_", "transform", "layer_norm", "projector.bias")}


hf_normalize_name, hf_tensor_name = bert.hf_prefixed("distilbert")


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers, the masked-LM head of a base checkpoint under another task (its projector's weight, the word
    embeddings, under any), and the sequence head's dense layer under a token or qa task."""
    return (name == "embeddings.position_ids" or bert.lm_head_unused(name, cfg, "vocab_", "vocab_projector.weight")
            or (cfg.task in ("token", "qa") and name.startswith("pre_classifier.")))


def hf_config(cfg, label_names: list[str] | None = None) -> dict:
    out = bert.hf_config(cfg, label_names)
    for key in (*bert.SHAPE_FIELDS.values(), "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "hidden_act", "position_embedding_type"):
        out.pop(key, None)
    return {**out, "architectures": [bert.hf_architecture("DistilBert", cfg)], "model_type": "distilbert",
            **{key: getattr(cfg, field) for field, key in SHAPE_FIELDS.items()},
            "activation": cfg.activation or bert.ACTIVATION, "dropout": cfg.hidden_dropout,
            "attention_dropout": cfg.attention_dropout,
            "seq_classif_dropout": cfg.hidden_dropout, "qa_dropout": cfg.hidden_dropout, "sinusoidal_pos_embds": False}


FAMILY = models.register(dataclasses.replace(
    bert.FAMILY, name="distilbert", presets=PRESETS, build=build, describe=describe,
    hf=models.HfMapping(model_types=("distilbert",), key_map=hf_key_map, configure=hf_configure,
                        hf_config=hf_config, tensor_name=hf_tensor_name, expected_unused=hf_expected_unused,
                        normalize_name=hf_normalize_name)))
