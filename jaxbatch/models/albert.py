"""The ALBERT family: BERT's encoder (models/bert.py) with one layer's parameters shared by every layer, and
embeddings narrower than the hidden size projected up (`model.embedding_size`), under the 'albert.' prefix,
numerically matching Hugging Face's `AlbertFor{Token,Sequence}Classification`. Its MLP output has no
dropout before the residual; its heads are BERT's; its tokenizer is a folder's SentencePiece model."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxbatch import models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.models import bert, electra

_ALBERT = dict(vocab_size=30000, embedding_size=128, max_position_embeddings=512, activation="gelu_new")
PRESETS = {
    "albert-tiny": dict(_ALBERT, vocab_size=512, embedding_size=32, hidden_size=64, num_layers=3, num_heads=4,
                        intermediate_size=256, max_position_embeddings=128),
    "albert-base-v2": dict(_ALBERT, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "albert-large-v2": dict(_ALBERT, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
VARIANT = bert.Variant(shared_layers=True, mlp_dropout=False)


def build(cfg, *, rngs: nnx.Rngs, dtype) -> bert.BertClassifier:
    return bert.BertClassifier(cfg, rngs=rngs, dtype=dtype, variant=VARIANT)


def validate(cfg, seq_len: int, model_axis: int) -> None:
    if cfg.embedding_size in (0, cfg.hidden_size):
        raise ConfigError(f"model.embedding_size={cfg.embedding_size}: ALBERT projects its embeddings up to "
                          f"hidden_size={cfg.hidden_size}, so they must be narrower (its presets: 128)")
    bert.validate(dataclasses.replace(cfg, embedding_size=0), seq_len, model_axis)


def describe(cfg) -> str:
    return f"ALBERT {cfg.preset} ({bert.head(cfg)}, one layer shared by {cfg.num_layers})"


def tokenizer(source):
    """A folder's tokenizer (SentencePiece: tokenizer.json or spiece.model), or BERT's word-level one over a
    word list."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if isinstance(source, (list, tuple)):
        return bert.tokenizer(source)
    files = ("tokenizer.json", "spiece.model")
    if not any((Path(source) / f).is_file() for f in files):
        raise CheckpointError(f"tokenizer: none of {', '.join(files)} in {source}")
    return AutoTokenizer.from_pretrained(str(source))


# ---- Hugging Face conversion table ----------------------------------------------------------------------

def hf_configure(cfg, hf: dict):
    """BERT's reading of config.json, the embedding width, and one group of one shared layer (the released
    checkpoints' layout; others are refused)."""
    groups = (hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1))
    if groups != (1, 1):
        raise CheckpointError(f"config.json: num_hidden_groups={groups[0]}, inner_group_num={groups[1]}: only one "
                              f"group of one shared layer (1, 1), ALBERT's released layout, is supported")
    shaped = electra.hf_configure(cfg, {**hf, "hidden_act": hf.get("hidden_act", "gelu_new")})
    if shaped.embedding_size == shaped.hidden_size:
        raise CheckpointError("config.json: embedding_size equals hidden_size; jaxbatch's ALBERT projects narrower "
                              "embeddings up (embedding_size < hidden_size)")
    return shaped


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    """The one shared layer under ALBERT's names; embeddings as BERT's; the pooler is a plain Linear."""
    layer = "encoder.albert_layer_groups.0.albert_layers.0"
    names = {"attention.query": "attention.query", "attention.key": "attention.key",
             "attention.value": "attention.value", "attention.out": "attention.dense",
             "attention_norm": "attention.LayerNorm", "mlp.wi": "ffn", "mlp.wo": "ffn_output",
             "output_norm": "full_layer_layer_norm"}
    m = {k: v for k, v in bert.hf_key_map(dataclasses.replace(cfg, num_layers=0)).items() if not k.startswith("pooler")}
    m.update({"encoder.embeddings_project.kernel": ("encoder.embedding_hidden_mapping_in.weight", "t"),
              "encoder.embeddings_project.bias": ("encoder.embedding_hidden_mapping_in.bias", "copy")})
    for ours, (theirs, how) in bert.hf_key_map(dataclasses.replace(cfg, num_layers=1, task="token")).items():
        if ours.startswith("encoder.layers.0."):
            module, part = ours[len("encoder.layers.0."):].rsplit(".", 1)
            m[ours] = (f"{layer}.{names[module]}.{'weight' if part in ('kernel', 'scale') else 'bias'}", how)
    if cfg.task == "sequence":
        m.update({"pooler.kernel": ("pooler.weight", "t"), "pooler.bias": ("pooler.bias", "copy")})
    return {**m, **bert.lm_head_map(cfg, "predictions.", "dense", "LayerNorm", "bias")}


hf_normalize_name, hf_tensor_name = bert.hf_prefixed("albert")


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers, the pretraining heads of a base checkpoint (its masked-LM head under another task; that head's
    decoder, the word embeddings and `predictions.bias`, under any), and its pooler under any task but sequence
    classification."""
    return (name in ("embeddings.position_ids", "embeddings.token_type_ids")
            or name.startswith("sop_classifier.")
            or bert.lm_head_unused(name, cfg, "predictions.", "predictions.decoder.")
            or (cfg.task != "sequence" and name.startswith("pooler.")))


def hf_config(cfg, label_names: list[str] | None = None) -> dict:
    out = bert.hf_config(cfg, label_names)
    return {**out, "architectures": [bert.hf_architecture("Albert", cfg)], "model_type": "albert",
            "embedding_size": cfg.embedding_size, "num_hidden_groups": 1, "inner_group_num": 1,
            "classifier_dropout_prob": cfg.hidden_dropout,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}


FAMILY = models.register(dataclasses.replace(
    bert.FAMILY, name="albert", presets=PRESETS, build=build, train_flops_per_token=electra.train_flops_per_token,
    validate=validate, describe=describe, tokenizer=tokenizer,
    hf=models.HfMapping(model_types=("albert",), key_map=hf_key_map, configure=hf_configure, hf_config=hf_config,
                        tensor_name=hf_tensor_name, expected_unused=hf_expected_unused,
                        normalize_name=hf_normalize_name)))
