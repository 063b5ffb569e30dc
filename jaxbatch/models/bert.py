"""The BERT family: an encoder with sequence- and token-classification heads and a masked-LM head, numerically
matching Hugging Face's `BertFor{Token,Sequence}Classification` and `BertForMaskedLM` (post-LayerNorm blocks,
erf GELU, `layer_norm_eps` from config, padding mask), with its presets, FLOP count, config checks, tokenizer
and HF conversion table."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxbatch import losses, models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.mesh import constrain
from jaxbatch.models.layers import (ACTIVATIONS, REMAT, Dense, Dropout, Embed, LayerNorm, Mlp, SelfAttention, param,
                                    run_layers)

# Named shapes: `tiny` is for tests; the others match the published checkpoints.
PRESETS = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                 max_position_embeddings=128),
    "minilm-l6": dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                      max_position_embeddings=512),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                      max_position_embeddings=512),
    "bert-large": dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                       max_position_embeddings=512),
}
TASKS = ("token", "sequence", "lm", "qa")  # lm: masked language modelling (data/masking.py); qa: answer spans
ACTIVATION = "gelu"  # BERT's own (exact, erf) GELU, used where model.activation is empty


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a BERT-derived architecture's modules differ from BERT's (the RoBERTa, DistilBERT and ELECTRA
    families pass theirs; the parameters keep BERT's names)."""

    position_offset: int = 0  # learned positions start at this row of their table (RoBERTa: past its padding row)
    pooler_activation: str = "tanh"  # the sequence head's nonlinearity on [CLS]: tanh, or an ACTIVATIONS name
    dropout_before_pooler: bool = False  # RoBERTa's and ELECTRA's heads drop out [CLS] before their dense layer
    shared_layers: bool = False  # one layer's parameters run num_layers times (ALBERT)
    mlp_dropout: bool = True  # dropout on the MLP's output before its residual (ALBERT has none there)
    lm_activation: str = ""  # the masked-LM head's nonlinearity ('' = model.activation's; RoBERTa, ELECTRA: gelu)
    qa_dropout: bool = False  # dropout before the answer-span head (DistilBERT's; BERT's has none)


class BertLayer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype, mlp_dropout: bool = True):
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_heads, rngs=rngs, dtype=dtype,
                                       impl=cfg.attention_impl, dropout=cfg.attention_dropout)
        self.attention_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, dtype=dtype,
                       activation=cfg.activation or ACTIVATION)
        self.output_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.mlp_dropout = mlp_dropout

    def __call__(self, x, mask, *, deterministic: bool, rngs: nnx.Rngs | None):
        drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)  # noqa: E731
        x = self.attention_norm(x + drop(self.attention(x, mask, deterministic=deterministic, rngs=rngs)))
        y = self.mlp(x, deterministic=deterministic, rngs=rngs)
        return self.output_norm(x + (drop(y) if self.mlp_dropout else y))


class BertEncoder(nnx.Module):
    """Embeddings + N post-LN Transformer layers; returns the last hidden state (batch, length, embed).
    Learned positions start at row `position_offset` of their table (RoBERTa's: past its padding row); with
    `model.embedding_size` the embeddings are that wide and projected to hidden_size (ELECTRA, ALBERT); a
    `Variant` with shared layers keeps one layer and runs it num_layers times (ALBERT)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, variant: Variant = Variant()):
        h, e = cfg.hidden_size, cfg.embedding_size or cfg.hidden_size
        self.position_offset, self.depth = variant.position_offset, cfg.num_layers
        self.word_embeddings = Embed(cfg.vocab_size, e, ("vocab", "embed"), rngs=rngs, dtype=dtype)
        self.position_embeddings = Embed(cfg.max_position_embeddings, e, (None, "embed"), rngs=rngs, dtype=dtype)
        self.token_type_embeddings = (Embed(cfg.type_vocab_size, e, (None, "embed"), rngs=rngs, dtype=dtype)
                                      if cfg.type_vocab_size else None)  # DistilBERT has no token types
        self.embeddings_norm = LayerNorm(e, cfg.layer_norm_eps, dtype=dtype)
        self.embeddings_project = (Dense((e,), (h,), (None,), ("embed",), rngs=rngs, dtype=dtype)
                                   if e != h else None)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs, dtype=dtype, mlp_dropout=variant.mlp_dropout)
                                for _ in range(1 if variant.shared_layers else cfg.num_layers)])
        self.scan_layers, self.remat = cfg.scan_layers, cfg.remat

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        positions = self.position_offset + jnp.arange(input_ids.shape[1])[None, :]  # rows are right-padded
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            x += self.token_type_embeddings(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        x = self.dropout(self.embeddings_norm(x), deterministic=deterministic, rngs=rngs)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        x = constrain(x, ("batch", "length", "embed"))
        mask = attention_mask.astype(bool)[:, None, None, :]  # (batch, heads, q, k), broadcast
        layers = list(self.layers) * (self.depth // len(self.layers))  # shared: the one layer, depth times
        return run_layers(layers, x, lambda layer, h, r: layer(h, mask, deterministic=deterministic, rngs=r),
                          scan=self.scan_layers, remat_policy=REMAT[self.remat], rngs=rngs)


class BertClassifier(nnx.Module):
    """BERT with a token-classification head (`task='token'`: logits per token), a sequence head
    (`task='sequence'`: tanh pooler on [CLS] + dense, logits per example), a masked-LM head (`task='lm'`:
    dense + activation + LayerNorm to the embedding width, then the word embeddings transposed plus a bias:
    logits over the vocabulary per token), or an answer-span head (`task='qa'`: a dense layer to a start and an
    end logit per token, without dropout), as HF's BertFor{Token,Sequence}Classification, BertForMaskedLM and
    BertForQuestionAnswering; a `Variant` makes it a RoBERTa, DistilBERT, ALBERT or ELECTRA."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, variant: Variant = Variant()):
        self.task, self.dtype, self.variant = cfg.task, dtype, variant
        self.encoder = BertEncoder(cfg, rngs=rngs, dtype=dtype, variant=variant)
        if cfg.task == "lm":  # the output layer is the word embeddings, tied as in every published checkpoint
            e = cfg.embedding_size or cfg.hidden_size
            self.lm_transform = Dense((cfg.hidden_size,), (e,), ("embed",), (None,), rngs=rngs, dtype=dtype, head=True)
            self.lm_activation = ACTIVATIONS[variant.lm_activation or cfg.activation or ACTIVATION]
            self.lm_norm = LayerNorm(e, cfg.layer_norm_eps, dtype=dtype)
            self.lm_bias = param(rngs, jax.nn.initializers.zeros, (cfg.vocab_size,), ("vocab",), decay=False, head=True)
            self.mlm_probability = cfg.mlm_probability
            return
        if cfg.task == "sequence":
            self.pooler = Dense((cfg.hidden_size,), (cfg.hidden_size,), ("embed",), (None,), rngs=rngs, dtype=dtype,
                                head=True)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.classifier = Dense((cfg.hidden_size,), (cfg.num_labels,), ("embed",), ("labels",), rngs=rngs,
                                dtype=dtype, head=True)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None, positions: jax.Array | None = None) -> jax.Array:
        """Logits; a masked LM's at every position, or at (batch, k) `positions` only (the predicted ones)."""
        drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)  # noqa: E731
        x = self.encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs)
        if self.task == "lm":
            if positions is not None:
                x = jnp.take_along_axis(x, positions[..., None], axis=1)
            x = self.lm_norm(self.lm_activation(self.lm_transform(x)))
            logits = self.encoder.word_embeddings.attend(x) + self.lm_bias[...].astype(self.dtype)
            return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if self.task == "sequence":
            x = drop(x[:, 0]) if self.variant.dropout_before_pooler else x[:, 0]
            x = POOLER_ACTIVATIONS[self.variant.pooler_activation](self.pooler(x))
        if self.task == "qa" and not self.variant.qa_dropout:
            return self.classifier(x).astype(jnp.float32)
        return self.classifier(drop(x)).astype(jnp.float32)


POOLER_ACTIVATIONS = {"tanh": jnp.tanh, **ACTIVATIONS}


# ---- What the core asks of a family ---------------------------------------------------------------------

def build(cfg, *, rngs: nnx.Rngs, dtype) -> BertClassifier:
    return BertClassifier(cfg, rngs=rngs, dtype=dtype)


def forward(model: BertClassifier, batch: dict, *, deterministic: bool, rngs: nnx.Rngs | None):
    """The logits; a masked LM's (logits, labels) at only the positions it may predict, losses.mlm_predictions
    per row (52 of 128 tokens at 15%: the other 59% of the head's vocabulary logits are not computed)."""
    inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    if model.task != "lm":
        return model(*inputs, deterministic=deterministic, rngs=rngs)
    labels = batch["labels"]
    positions = losses.predicted_positions(labels, losses.mlm_predictions(labels.shape[1], model.mlm_probability))
    return (model(*inputs, deterministic=deterministic, rngs=rngs, positions=positions),
            jnp.take_along_axis(labels, positions, axis=1))


FILL_MASK_TOP = 5  # a masked LM's predictions at each predicted position: the likeliest tokens (HF's fill-mask top_k)


def loss_sums(logits, batch: dict, cfg) -> tuple[dict, dict]:
    """The head's sums and predictions; a masked LM's (forward's (logits, labels)): the predicted positions'
    cross-entropy, and at each of them the FILL_MASK_TOP likeliest tokens and their probabilities."""
    if cfg.task == "lm":
        probs, ids = jax.lax.top_k(jax.nn.softmax(logits[0]), FILL_MASK_TOP)
        return losses.lm_sums(*logits, cfg.z_loss, cfg.label_smoothing), dict(top_ids=ids, top_probs=probs)
    if cfg.task == "qa":
        return losses.span_sums(logits, batch["labels"], batch["attention_mask"])
    return losses.head_sums(logits, batch["labels"], cfg)


def batch_shapes(cfg, batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    return {"input_ids": (batch, seq_len), "attention_mask": (batch, seq_len), "token_type_ids": (batch, seq_len),
            "labels": models.label_shape(cfg, batch, seq_len)}


def train_flops_per_token(cfg, seq_len: int) -> float:
    """Matmul FLOPs of one training step per token: 3 x forward (backward = 2 x forward).

    Forward per layer and token: QKV + output projections 8h^2, MLP 4hI, attention scores and values 4Th
    (non-causal: every query sees all T keys); the classifier head 2hL (the pooler 2h^2 once per sequence), or
    the masked-LM head 2he + 2eV at the predicted share of positions, model.mlm_probability (e: the embedding
    width; the head runs at a few more, losses.mlm_predictions, which are not counted). Embedding gathers are
    not matmuls and are not counted. This is the PaLM-style count MaxText uses for MFU."""
    h, inter, t = cfg.hidden_size, cfg.intermediate_size, seq_len
    e = cfg.embedding_size or h
    per_token = cfg.num_layers * (8 * h * h + 4 * h * inter + 4 * t * h) + (
        (2 * h * e + 2 * e * cfg.vocab_size) * cfg.mlm_probability if cfg.task == "lm" else 2 * h * cfg.num_labels)
    if cfg.task == "sequence":
        per_token += 2 * h * h / t
    return 3.0 * per_token


def validate(cfg, seq_len: int, model_axis: int) -> None:
    for key, size in (("model.num_heads", cfg.num_heads), ("model.intermediate_size", cfg.intermediate_size)):
        if size % model_axis:
            raise ConfigError(f"{key}={size} is not divisible by mesh.model={model_axis} (tensor parallel)")
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads={cfg.num_heads}")
    if cfg.head_dim not in (0, cfg.hidden_size // cfg.num_heads):
        raise ConfigError(f"model.head_dim={cfg.head_dim}: BERT's heads are hidden_size / num_heads wide (set 0)")
    if cfg.embedding_size not in (0, cfg.hidden_size):
        raise ConfigError(f"model.embedding_size={cfg.embedding_size}: this family's embeddings are hidden_size wide "
                          f"(set 0; ELECTRA's presets project narrower ones)")
    if cfg.task not in TASKS:
        raise ConfigError(f"model.task must be token, sequence, lm (masked language modelling) or qa (extractive "
                          f"question answering), got {cfg.task!r}")
    if cfg.task == "qa" and cfg.num_labels != 2:
        raise ConfigError(f"model.num_labels={cfg.num_labels}: an answer-span head has two outputs (start, end)")
    if cfg.task == "lm" and cfg.vocab_tiling > 1:
        raise ConfigError("model.vocab_tiling: an encoder's masked-LM head is computed whole (set 1)")
    if seq_len < 3:
        raise ConfigError(f"data.seq_len={seq_len} leaves no room for a word between [CLS] and [SEP] (>= 3)")
    if seq_len > cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={seq_len} exceeds model.max_position_embeddings={cfg.max_position_embeddings}")


def head(cfg) -> str:
    """The head, as a run's summary line names it."""
    if cfg.task == "lm":
        return f"masked language modelling, {cfg.vocab_size} tokens"
    return models.head_summary(cfg)


def describe(cfg) -> str:
    return f"BERT {cfg.preset} ({head(cfg)})"


def tokenizer(source):
    """A word-piece tokenizer from a folder (vocab.txt [+ tokenizer_config.json], or tokenizer.json) or a
    word list.

    transformers 5 reads the vocabulary from `vocab=`; the older `vocab_file=` is silently ignored there."""
    import json
    from pathlib import Path

    from transformers import BertTokenizer

    if isinstance(source, (list, tuple)):
        return BertTokenizer(vocab={w: i for i, w in enumerate(source)}, do_lower_case=False)
    vocab = Path(source) / "vocab.txt"
    if not vocab.is_file():
        if (Path(source) / "tokenizer.json").is_file():  # what transformers 5 saves
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(source))
        raise CheckpointError(f"tokenizer: neither vocab.txt nor tokenizer.json in {source}")
    lowercase, config = True, vocab.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{config}: not a valid JSON object ({e})") from e
    return BertTokenizer(vocab=str(vocab), do_lower_case=lowercase)


# ---- Hugging Face conversion table ----------------------------------------------------------------------

SHAPE_FIELDS = {  # ModelConfig field -> config.json key
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
}


def hf_configure(cfg, hf: dict, default_eps: float = 1e-12):
    """The model shape from a BERT config.json; with a named preset, every shape field must agree. A
    fine-tuned head (an architecture named *ForTokenClassification or *ForSequenceClassification) sets the
    task and label count, and a regression head (HF's problem_type, or one output) or a multi-label one
    model.problem_type unless it is set."""
    activation = models.hf_activation(hf, "hidden_act", ACTIVATION)
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError("config.json: is_decoder / add_cross_attention (a causal or cross-attending BERT) "
                              "is not supported; jaxbatch BERT is a bidirectional encoder")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"config.json: position_embedding_type {hf['position_embedding_type']!r} is not supported")
    wanted = {field: hf[key] for field, key in SHAPE_FIELDS.items()}  # a missing key is an error, never a default
    models.check_shape(cfg, wanted)
    # a masked-LM checkpoint (a *ForPreTraining one holds that head too, and sets no task)
    wanted.update(models.hf_head(cfg, hf, {"ForTokenClassification": "token", "ForSequenceClassification": "sequence",
                                           "ForMaskedLM": "lm", "ForQuestionAnswering": "qa"}))
    return dataclasses.replace(cfg, **wanted, layer_norm_eps=float(hf.get("layer_norm_eps", default_eps)),
                               activation=activation)


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    """jaxbatch parameter name -> (HF tensor name without the 'bert.' prefix, layout transform)."""
    m = {
        "encoder.word_embeddings.embedding": ("embeddings.word_embeddings.weight", "copy"),
        "encoder.position_embeddings.embedding": ("embeddings.position_embeddings.weight", "copy"),
        "encoder.token_type_embeddings.embedding": ("embeddings.token_type_embeddings.weight", "copy"),
        "encoder.embeddings_norm.scale": ("embeddings.LayerNorm.weight", "copy"),
        "encoder.embeddings_norm.bias": ("embeddings.LayerNorm.bias", "copy"),
        "classifier.kernel": ("classifier.weight", "t"),
        "classifier.bias": ("classifier.bias", "copy"),
    }
    if cfg.task == "sequence":
        m["pooler.kernel"] = ("pooler.dense.weight", "t")
        m["pooler.bias"] = ("pooler.dense.bias", "copy")
    if cfg.task == "lm":  # the masked-LM head is each family's own (lm_head_map)
        for name in ("classifier.kernel", "classifier.bias"):
            del m[name]
    if cfg.task == "qa":  # every family's *ForQuestionAnswering names its span head so
        m["classifier.kernel"], m["classifier.bias"] = ("qa_outputs.weight", "t"), ("qa_outputs.bias", "copy")
    for i in range(cfg.num_layers):
        ours, theirs = f"encoder.layers.{i}", f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            m[f"{ours}.attention.{name}.kernel"] = (f"{theirs}.attention.self.{name}.weight", "qkv_kernel")
            m[f"{ours}.attention.{name}.bias"] = (f"{theirs}.attention.self.{name}.bias", "qkv_bias")
        m[f"{ours}.attention.out.kernel"] = (f"{theirs}.attention.output.dense.weight", "out_kernel")
        m[f"{ours}.attention.out.bias"] = (f"{theirs}.attention.output.dense.bias", "copy")
        m[f"{ours}.attention_norm.scale"] = (f"{theirs}.attention.output.LayerNorm.weight", "copy")
        m[f"{ours}.attention_norm.bias"] = (f"{theirs}.attention.output.LayerNorm.bias", "copy")
        m[f"{ours}.mlp.wi.kernel"] = (f"{theirs}.intermediate.dense.weight", "t")
        m[f"{ours}.mlp.wi.bias"] = (f"{theirs}.intermediate.dense.bias", "copy")
        m[f"{ours}.mlp.wo.kernel"] = (f"{theirs}.output.dense.weight", "t")
        m[f"{ours}.mlp.wo.bias"] = (f"{theirs}.output.dense.bias", "copy")
        m[f"{ours}.output_norm.scale"] = (f"{theirs}.output.LayerNorm.weight", "copy")
        m[f"{ours}.output_norm.bias"] = (f"{theirs}.output.LayerNorm.bias", "copy")
    return m


def lm_head_map(cfg, prefix: str, dense: str, norm: str, bias: str) -> dict[str, tuple[str, str]]:
    """The masked-LM head under a family's names, under the lm task (its decoder weight is the word embeddings,
    not stored apart)."""
    if cfg.task != "lm":
        return {}
    return {"lm_transform.kernel": (f"{prefix}{dense}.weight", "t"),
            "lm_transform.bias": (f"{prefix}{dense}.bias", "copy"),
            "lm_norm.scale": (f"{prefix}{norm}.weight", "copy"), "lm_norm.bias": (f"{prefix}{norm}.bias", "copy"),
            "lm_bias": (f"{prefix}{bias}", "copy")}


def hf_head_map(cfg) -> dict[str, tuple[str, str]]:
    """The sequence head where RoBERTa and ELECTRA store it (classifier.dense, classifier.out_proj)."""
    if cfg.task != "sequence":
        return {}
    return {"pooler.kernel": ("classifier.dense.weight", "t"), "pooler.bias": ("classifier.dense.bias", "copy"),
            "classifier.kernel": ("classifier.out_proj.weight", "t"),
            "classifier.bias": ("classifier.out_proj.bias", "copy")}


def hf_prefixed(prefix: str):
    """(normalize_name, tensor_name) of a family storing its encoder under `prefix.` and its heads at the top."""
    def normalize_name(name: str) -> str:
        return name[len(prefix) + 1:] if name.startswith(prefix + ".") else name

    def tensor_name(name: str, cfg) -> str:
        return name if name.startswith(HEADS_AT_TOP) else f"{prefix}.{name}"

    return normalize_name, tensor_name


def hf_normalize_name(name: str) -> str:
    """HF task models prefix the encoder with 'bert.'; old checkpoints say gamma/beta for LayerNorm."""
    name = name[5:] if name.startswith("bert.") else name
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def lm_head_unused(name: str, cfg, head: str, tied: str) -> bool:
    """Whether a stored tensor of a family's masked-LM head (names starting with `head`) is left unread: its
    tied decoder (`tied`: the word embeddings, or a copy of the head's bias) always, the rest under another task
    (a pretrained model fine-tuned)."""
    return name.startswith(tied) or (cfg.task != "lm" and name.startswith(head))


def hf_bert_key_map(cfg) -> dict[str, tuple[str, str]]:
    return {**hf_key_map(cfg), **lm_head_map(cfg, "cls.predictions.", "transform.dense", "transform.LayerNorm", "bias")}


# where each family's transformers class keeps its masked-LM head: outside the encoder's prefix
LM_HEADS = ("cls.", "lm_head.", "vocab_", "predictions.", "generator_")
HEADS_AT_TOP = ("classifier", "pre_classifier", "qa_outputs", *LM_HEADS)  # stored outside the encoder's prefix


def hf_tensor_name(name: str, cfg) -> str:
    return name if name.startswith(HEADS_AT_TOP) else "bert." + name


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers; a base checkpoint's pooler under a token, masked-LM or qa task; a masked-LM head under another task
    (a pretrained model fine-tuned), and its decoder's weight and bias under any (the word embeddings and
    `cls.predictions.bias`); a pretraining checkpoint's next-sentence head."""
    return (name == "embeddings.position_ids" or (cfg.task != "sequence" and name.startswith("pooler."))
            or name.startswith("cls.seq_relationship.")
            or lm_head_unused(name, cfg, "cls.predictions.", "cls.predictions.decoder."))


def hf_architecture(prefix: str, cfg) -> str:
    """The transformers class a family's head is saved as: {prefix}For{Token,Sequence}Classification,
    {prefix}ForMaskedLM or {prefix}ForQuestionAnswering."""
    if cfg.task in ("lm", "qa"):
        return f"{prefix}For{'MaskedLM' if cfg.task == 'lm' else 'QuestionAnswering'}"
    return f"{prefix}For{'Token' if cfg.task == 'token' else 'Sequence'}Classification"


def hf_config(cfg, label_names: list[str] | None = None) -> dict:
    if cfg.task == "lm":  # no labels: a masked LM's outputs are the vocabulary
        cfg, label_names = dataclasses.replace(cfg, num_labels=2, problem_type=""), None
    return {
        "architectures": [hf_architecture("Bert", cfg)], "model_type": "bert",
        "hidden_act": cfg.activation or ACTIVATION,
        **{key: getattr(cfg, field) for field, key in SHAPE_FIELDS.items()},
        "layer_norm_eps": cfg.layer_norm_eps, "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout, "initializer_range": 0.02, "pad_token_id": 0,
        "position_embedding_type": "absolute", **models.hf_labels(cfg, label_names),
    }


FAMILY = models.register(models.Family(
    name="bert", presets=PRESETS, build=build, forward=forward, loss_sums=loss_sums, batch_shapes=batch_shapes,
    train_flops_per_token=train_flops_per_token, validate=validate, describe=describe, tokenizer=tokenizer,
    masked=True,
    hf=models.HfMapping(model_types=("bert",), key_map=hf_bert_key_map, configure=hf_configure, hf_config=hf_config,
                        tensor_name=hf_tensor_name, expected_unused=hf_expected_unused,
                        normalize_name=hf_normalize_name)))
