"""The RoBERTa family (RoBERTa, XLM-RoBERTa, CamemBERT checkpoints): BERT's encoder and heads (models/bert.py)
with RoBERTa's three differences, numerically matching Hugging Face's `RobertaFor{Token,Sequence}Classification`:
learned positions start past the padding row of their table (row 2 for the first token), one token type, and
a sequence head that drops out the <s> vector before its dense + tanh. Its tokenizers are byte-level BPE or
SentencePiece, which must be told to add a word's leading space when words come pre-split (as HF's run_ner.py
does)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxbatch import models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.models import bert

PADDING_IDX = 1  # RoBERTa's <pad> id, which its position table reserves: positions count from PADDING_IDX + 1
POSITION_OFFSET = PADDING_IDX + 1
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # at ids 0..4, as in every RoBERTa vocabulary

_SHAPE = dict(type_vocab_size=1, layer_norm_eps=1e-5)
PRESETS = {
    "roberta-tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                         max_position_embeddings=130, **_SHAPE),
    "roberta-base": dict(vocab_size=50265, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                         max_position_embeddings=514, **_SHAPE),
    "roberta-large": dict(vocab_size=50265, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                          max_position_embeddings=514, **_SHAPE),
    "xlm-roberta-base": dict(vocab_size=250002, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                             max_position_embeddings=514, **_SHAPE),
}
VARIANT = bert.Variant(position_offset=POSITION_OFFSET, dropout_before_pooler=True, lm_activation="gelu")


def build(cfg, *, rngs: nnx.Rngs, dtype) -> bert.BertClassifier:
    """BERT's classifier with RoBERTa's positions; its sequence head is HF's RobertaClassificationHead
    (dropout, dense + tanh on <s>, dropout, projection), kept under BERT's names (pooler, classifier)."""
    return bert.BertClassifier(cfg, rngs=rngs, dtype=dtype, variant=VARIANT)


def validate(cfg, seq_len: int, model_axis: int) -> None:
    bert.validate(cfg, seq_len, model_axis)
    if seq_len + POSITION_OFFSET > cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={seq_len} needs model.max_position_embeddings >= {seq_len + POSITION_OFFSET} "
                          f"(RoBERTa's first {POSITION_OFFSET} position rows are not used), got "
                          f"{cfg.max_position_embeddings}")


def describe(cfg) -> str:
    return f"RoBERTa {cfg.preset} ({bert.head(cfg)})"


def tokenizer(source):
    """A folder's tokenizer (byte-level BPE or SentencePiece, told to add each pre-split word's leading space),
    or a word-level one over a word list with RoBERTa's special tokens at their ids."""
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(source, (list, tuple)):
        import tokenizers

        words = [*SPECIAL_TOKENS, *(w for w in source if not (w.startswith("[") and w.endswith("]")))]
        core = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
        core.post_processor = tokenizers.processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
        return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", cls_token="<s>", pad_token="<pad>",
                                       eos_token="</s>", sep_token="</s>", unk_token="<unk>", mask_token="<mask>")
    files = ("tokenizer.json", "vocab.json", "sentencepiece.bpe.model")
    if not any((Path(source) / f).is_file() for f in files):
        raise CheckpointError(f"tokenizer: none of {', '.join(files)} in {source}")
    return AutoTokenizer.from_pretrained(str(source), add_prefix_space=True)


# ---- Hugging Face conversion table: BERT's, under the 'roberta.' prefix and with RoBERTa's sequence head ----

def hf_configure(cfg, hf: dict):
    if hf.get("pad_token_id", PADDING_IDX) != PADDING_IDX:
        raise CheckpointError(f"config.json: pad_token_id {hf['pad_token_id']!r}: RoBERTa's position table is laid "
                              f"out around padding id {PADDING_IDX}, which jaxbatch's RoBERTa assumes")
    return bert.hf_configure(cfg, hf, default_eps=1e-5)


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    return {**bert.hf_key_map(cfg), **bert.hf_head_map(cfg),
            **bert.lm_head_map(cfg, "lm_head.", "dense", "layer_norm", "bias")}


hf_normalize_name, hf_tensor_name = bert.hf_prefixed("roberta")


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers, a base model's pooler (RoBERTa's heads do not use it), a masked-LM head under another task, and
    that head's decoder (the word embeddings and `lm_head.bias`)."""
    return (name.startswith("pooler.") or bert.lm_head_unused(name, cfg, "lm_head.", "lm_head.decoder.")
            or name in ("embeddings.position_ids", "embeddings.token_type_ids"))


def hf_config(cfg, label_names: list[str] | None = None) -> dict:
    out = bert.hf_config(cfg, label_names)
    return {**out, "architectures": [bert.hf_architecture("Roberta", cfg)], "model_type": "roberta",
            "pad_token_id": PADDING_IDX, "bos_token_id": 0, "eos_token_id": 2, "classifier_dropout": None}


FAMILY = models.register(dataclasses.replace(
    bert.FAMILY, name="roberta", presets=PRESETS, build=build, validate=validate, describe=describe,
    tokenizer=tokenizer, max_seq_len=lambda cfg: cfg.max_position_embeddings - POSITION_OFFSET,
    hf=models.HfMapping(model_types=("roberta", "xlm-roberta", "camembert"), key_map=hf_key_map,
                        configure=hf_configure, hf_config=hf_config, tensor_name=hf_tensor_name,
                        expected_unused=hf_expected_unused, normalize_name=hf_normalize_name)))
