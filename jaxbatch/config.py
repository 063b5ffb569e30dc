"""Typed run configuration: dataclasses, `key=value` overrides, files, validation.

One `Config` holds everything a run needs. It is built from defaults, then an optional TOML/JSON file,
then command-line `section.key=value` overrides, and validated before any device work starts, so a typo
or an impossible shape fails in a second with a message naming the key, not minutes later inside XLA.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from jaxbatch import mesh as mesh_lib
from jaxbatch import models
from jaxbatch import compress, lora, losses, optim, rampup
from jaxbatch.compress import prune
from jaxbatch.errors import ConfigError
from jaxbatch.models.layers import ACTIVATIONS, ATTENTION, REMAT

# Logical axis -> mesh axes. Data, not code: DP, FSDP and TP are all this table plus the mesh shape.
# A mesh axis is used at most once per array; a later dimension skips axes already taken (so an
# activation's `embed` stays replicated while its `batch` already uses 'fsdp'), as in MaxText.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("model",)),
    ("embed", ("fsdp",)),
    ("mlp", ("model",)),
    ("heads", ("model",)),
    ("kv", ()),
    ("length", ()),
    ("labels", ()),
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model family and shape. A `preset` names a family's shape (see `jaxbatch keys model` and
    models/<family>.py); explicit keys win over the preset. Families read the fields they use."""

    family: str = ""  # empty = the preset's family ('custom' presets need it set)
    preset: str = "tiny"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    embedding_size: int = 0  # encoders: width of the embeddings, projected to hidden_size (ELECTRA); 0 = hidden_size
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0  # on attention probabilities, in training (HF's attention_probs_dropout_prob)
    # the MLP's nonlinearity by its Hugging Face name (gelu, gelu_new, quick_gelu, relu, silu, ...; see
    # models/layers.ACTIVATIONS); empty = the architecture's own: gelu (encoders), gelu_new (gpt2), silu (llama, gated)
    activation: str = ""
    task: str = "token"  # token | sequence (encoders) | lm (decoders: next token; encoders: masked); the data decides
    num_labels: int = 9
    # sequence heads, HF's problem_type: regression (a score, or a list of them per text; mean squared error:
    # GLUE STS-B) | multi_label_classification (any number of classes per text: a sigmoid and binary
    # cross-entropy each) | classification (or HF's name for it, single_label_classification);
    # empty = the data decides (lists of classes make a multi-label head; labels all numbers, some with a
    # decimal point, are scores, as HF's run_glue reads a float column); a resolved spec holds regression,
    # multi_label_classification or empty
    problem_type: str = ""
    pretrained: str = ""  # HF folder or a known name (e.g. minilm-l6); empty = random init
    # decoder families (model.arch picks the block); vocab_size=0 takes the tokenizer's size
    arch: str = "gpt2"  # gpt2 (LayerNorm, GELU, learned positions, biases) | llama (RMSNorm, SwiGLU, RoPE, no biases)
    # | gemma (llama's block with RMSNorms scaling by 1 + weight, norms after attention and MLP too, a
    # GELU-gated MLP, embeddings times sqrt(hidden_size): Gemma 2; with qk_norm and rope_local_theta, Gemma 3)
    num_kv_heads: int = 0  # grouped-query attention: key/value heads (0 = num_heads)
    head_dim: int = 0  # width of an attention head (0 = hidden_size / num_heads)
    attention_bias: str = "none"  # llama arch: none | qkv (query, key, value projections) | all (and output)
    mlp_bias: bool = False  # llama arch: biases on the MLP's gate, up and down projections
    sliding_window: int = 0  # a token attends to at most this many latest tokens, itself included (0 = all)
    sliding_window_pattern: int = 0  # with a window: every Nth layer (N, 2N, ...) sees all tokens (Gemma 3: 6); 0 = none
    rope_local_theta: float = 0.0  # the windowed layers' rotary base, unscaled (Gemma 3: 10000); 0 = as the others
    query_scale: float = 0.0  # scores are divided by sqrt(this) (Gemma's query_pre_attn_scalar); 0 = the head width
    attention_softcap: float = 0.0  # scores become cap * tanh(scores / cap) before the mask (Gemma 2); 0 = none
    logit_softcap: float = 0.0  # the LM head's logits likewise (Gemma 2's final_logit_softcapping); 0 = none
    qk_norm: bool = False  # llama arch: RMSNorm over each head's queries and keys before the rotary embedding (Qwen3)
    block_norms: str = ""  # decoders: pre (norms before attention and MLP) or sandwich (after too); '' = arch's own
    rope_theta: float = 10000.0
    # rotary scaling for long context, as HF's rope_parameters: default | linear (positions / factor) |
    # llama3 (low frequencies / factor, high ones kept, a smooth blend between) | yarn (a ramp over dimensions)
    rope_type: str = "default"
    rope_factor: float = 1.0  # linear, llama3, yarn: the context extension factor
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above original/low are divided by factor
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original/high are kept
    rope_original_max_positions: int = 8192  # llama3, yarn: the context length of pretraining
    rope_beta_fast: float = 32.0  # yarn: dimensions rotating more than this often over the original length are kept
    rope_beta_slow: float = 1.0  # yarn: ... less than this often are divided by factor
    rope_attention_factor: float = 0.0  # yarn: cos/sin scale (0 = 0.1 ln(factor) + 1, the paper's)
    tie_embeddings: bool = True  # the LM head reuses the token embedding
    remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable: recompute in backward
    # the attention kernel: auto (cuDNN's fused flash attention on NVIDIA GPUs in bf16/fp16 where it runs,
    # XLA's otherwise; models/layers.fused_kernel) | xla (XLA's everywhere, e.g. to compare)
    attention_impl: str = "auto"
    scan_layers: bool = False  # one compiled layer in lax.scan over stacked layer params (faster compiles of deep models)
    z_loss: float = 0.0  # PaLM's z-loss weight on log(sum(exp(logits)))^2
    # an LM's head and loss in this many pieces of the sequence, each piece's logits recomputed in the backward
    # pass: the (batch, length, vocab) logits never exist whole (MaxText's num_vocab_tiling); 1 = whole
    vocab_tiling: int = 1
    label_smoothing: float = 0.0  # training targets mix in this much of the uniform distribution (HF's
    # label_smoothing_factor); evaluation reports the plain cross-entropy
    # masked language modelling (an encoder's lm task): the share of tokens predicted, of which 80% are shown as
    # the mask token and 10% as a random one (HF's mlm_probability; data/masking.py)
    mlm_probability: float = 0.15
    mlm_mask_replace_prob: float = 0.8  # of the predicted tokens, the share shown as the mask token (HF's name)
    mlm_random_replace_prob: float = 0.1  # ... shown as a random token; the rest are shown as themselves
    mlm_whole_word_mask: bool = False  # choose whole words (their first token drawn), as HF's whole_word_mask
    # compressed models (written by `jaxbatch compress`; see jaxbatch/compress/)
    quant: str = ""  # int8: dense kernels and embedding tables stored and run as int8 | '' = float
    quant_act: str = "none"  # int8 activations too: dynamic (per token) | static (calibrated per layer) | none
    quant_exclude: str = ""  # regex over module paths kept in float
    lowrank: str = ""  # module.path:rank,...: dense layers replaced by two rank-r factors
    # LoRA fine-tuning (jaxbatch/lora.py): rank > 0 trains rank-r updates of these dense layers (and a
    # classification head) and freezes the rest; scale lora_alpha / rank (0 = rank), or lora_alpha / sqrt(rank)
    # with lora_rslora (rank-stabilised LoRA, PEFT's use_rslora)
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: str = "query,value"  # any of query,key,value,out,wi,wo,gate, or all-linear (every one)
    lora_rslora: bool = False
    lora_dropout: float = 0.0  # dropout on the LoRA factors' input in training (PEFT's lora_dropout)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning while training (compress/prune.py): masks in the train state, applied after every
    update. One shot when begin == end; else Zhu & Gupta's cubic schedule from begin to end."""

    sparsity: float = 0.0  # final fraction of zeros in the pruned kernels; 0 = off (an N:M pattern implies it)
    pattern: str = ""  # N:M (e.g. 2:4): keep N of every M weights along the contraction dim; empty = unstructured
    scope: str = "layer"  # layer: each kernel exactly at the sparsity | global: one ranking over all of them
    begin: int = 0  # first step of the schedule
    end: int = 0  # step the final sparsity is reached
    every: int = 100  # steps between mask updates
    exclude: str = ""  # regex over parameter names (e.g. 'pooler'): kept dense
    exclude_axes: str = "vocab,labels"  # kernels with these logical axes (output heads) are kept dense


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over ('data', 'fsdp', 'model'); -1 takes the devices the other axes leave."""

    data: int = -1
    fsdp: int = 1
    model: int = 1
    rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | lamb | lars | sgd | adafactor | muon
    learning_rate: float = 5e-4
    warmup_steps: int = 10
    # > 0: warm up over this fraction of train.steps instead (HF's warmup_ratio, MaxText's warmup_steps_fraction);
    # a fraction of this run's own steps, so LR scaling rules leave it as it is
    warmup_fraction: float = 0.0
    schedule: str = "linear"  # linear | cosine | polynomial | constant | wsd | rsqrt (optim.schedule's docstring)
    # the decay ends at this fraction of the peak (min_lr / learning_rate in Karpathy's recipes, MaxText's
    # learning_rate_final_fraction, HF's min_lr_rate); rsqrt: its floor
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.1  # wsd: its final decay's share of train.steps (MaxText's wsd_decay_steps_fraction)
    decay_shape: str = "linear"  # wsd: its final decay, linear | cosine | 1-sqrt (HF's decay_type)
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    momentum: float = 0.9  # lars, sgd
    muon_momentum: float = 0.95  # muon's Nesterov momentum (torch.optim.Muon's, optax's and MaxText's default)
    clip_norm: float = 1.0  # 0 disables global-norm clipping
    scale_rule: str = "none"  # linear | sqrt | none
    reference_batch: int = 0  # batch the learning_rate/warmup were tuned for (0 = this run's batch)
    flatten: bool = False  # adamw's moments as one vector each (optax.flatten); data-parallel meshes only


@dataclasses.dataclass(frozen=True)
class PrecisionConfig:
    policy: str = "fp32"  # fp32 | bf16 | fp16
    init_loss_scale: float = 2.0**15
    growth_interval: int = 2000


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # conll | tsv | squad | text (your files) | conll2003 | sst2 (their presets) | synthetic_ner | synthetic_sst | synthetic_qa
    name: str = "synthetic_ner"
    data_dir: str = ""  # the dataset's files (CoNLL train/dev/test, TSV train/dev/test); empty = TFDS catalog (online)
    cache_dir: str = ""  # where tfds keeps prepared array_record files; empty = $JAXBATCH_CACHE/tfds
    tokenizer: str = ""  # tokenizer folder or known name for a randomly initialised model; empty = model.pretrained's
    seq_len: int = 64
    num_train: int = 2048  # synthetic corpora: examples to generate
    num_eval: int = 256
    max_train: int = 0  # real datasets: use only the first N training examples (0 = all)
    max_eval: int = 0  # training evaluates the first N validation examples (0 = all; HF's max_eval_samples)
    labels: str = ""  # label set in id order, comma-separated; empty = a Parquet file's names, the preset's, the data's
    unknown_label: str = "error"  # a dev/test tag not in the label set: error | O (mapped, with a warning)
    label_all_subtokens: bool = False  # NER: label every word piece, not only the first
    line_by_line: bool = False  # a masked LM: each non-empty line its own example, cut and padded (run_mlm's)
    buckets: int = 1  # length buckets for training batches (the lengths that pad the split least); 1 = no bucketing
    shuffle_seed: int = 0
    # question answering (data.name=squad): context tokens a long context's neighbouring windows share (0: seq_len
    # // 3, HF's 128 of 384), the longest answer predicted in tokens, and whether a question may have no answer
    # (SQuAD 2.0: HF's --version_2_with_negative; "" is then predicted where the [CLS] score beats every span's by
    # more than null_threshold, HF's --null_score_diff_threshold)
    doc_stride: int = 0
    max_answer_length: int = 30
    unanswerable: bool = False
    null_threshold: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # global batch, in sequences
    accum_steps: int = 1  # micro-batches per step (global batch = accum_steps x micro-batch)
    accum_impl: str = "scan"  # scan | multisteps
    steps: int = 100
    # > 0: train.steps is set once the data is read, to the steps whose batches hold epochs x the training examples
    # (packed rows for text; HF's num_train_epochs, fractions too); the later of train.steps and train.epochs wins
    epochs: float = 0.0
    eval_every: int = 50
    eval_batch_size: int = 0  # sequences per evaluation batch (0: the micro-batch); forward only, so larger fits
    log_every: int = 10
    seed: int = 0
    run_dir: str = "runs/default"
    progress: bool = True
    peak_tflops: float = 0.0  # per device, for MFU; 0 = look up the device kind or measure a matmul
    auto_micro_batch: bool = False  # pick accum_steps from the compiled step's memory analysis
    memory_budget_gb: float = 0.0  # per device, for auto_micro_batch; 0 = 90% of the device's memory (CPU: of RAM / devices)
    stop_after: int = 0  # save and exit after N steps this process (a job's time slot); the next run resumes
    max_bad_steps: int = 10  # stop (exit 3) after this many steps in a row with non-finite loss/gradients (skipped)
    profile: int = 0  # trace this many steps (from the second of a process) with jax.profiler into <run_dir>/profile
    patience: int = 0  # early stopping: stop after this many evaluations without a better checkpoint.best_metric (0 = never)
    rampup_samples: int = 0  # batch ramp-up (rampup.py): grow the batch over this many examples; 0 = off
    rampup_start: int = 0  # global batch at step 0 when ramping up
    rampup_increment: int = 0  # batch growth per increment; 0 = the micro-batch (batch_size / accum_steps)
    # what divides a batch's summed loss (steps.loss_denominator): batch = its labelled positions (HF's mean);
    # dataset = rows x the train split's mean labelled positions per row; auto = dataset with data.buckets > 1
    loss_norm: str = "auto"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    directory: str = ""  # empty = <train.run_dir>/checkpoints
    every: int = 0  # steps between saves; 0 = only at the end (and on SIGTERM)
    max_to_keep: int = 3
    resume: bool = True  # continue from the latest checkpoint in the directory, if any
    # keep the checkpoint with the best value of this eval metric (loss, accuracy, entity_f1, perplexity,
    # bits_per_byte) beside the latest max_to_keep, as HF's load_best_model_at_end; every evaluation saves,
    # and predict, evaluate, generate, compress and export read the best one. Empty = the newest is the model
    best_metric: str = ""
    best_mode: str = "auto"  # max | min | auto (min for loss, perplexity and bits_per_byte, else max)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host: one process per host. `auto` lets JAX find the coordinator (TPU VMs, SLURM)."""

    auto: bool = False
    coordinator: str = ""  # HOST:PORT of process 0
    num_processes: int = 1
    process_id: int = 0
    cpu_devices: int = 0  # CPU only: XLA devices per process (gloo between processes); 0 = JAX's default, -1 = one per core
    # CPU: one malloc arena for all threads (host.py): true | false | auto = when the train step's temporaries per
    # device pass the 64 MiB a thread's own arena can hold (estimated from the model's shape, the data's task and
    # the tokenizer's vocabulary before JAX starts: distributed.wants_one_arena)
    cpu_one_arena: str = "auto"
    # seconds: how long a process waits for every other one to join (then all abort, exit 134: JAX's coordination
    # service), and how long a process may go silent before the others abort (a host that died mid-run)
    init_timeout: int = 300
    heartbeat_timeout: int = 100


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    precision: PrecisionConfig = dataclasses.field(default_factory=PrecisionConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    cfg = Config() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(text_or_value: Any, hint: Any, key: str) -> Any:
    """Turns a command-line string (or a file value) into the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    value = text_or_value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is str and isinstance(value, bool):  # a switch that became a word (distributed.cpu_one_arena)
            return str(value).lower()
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
        if origin is tuple:  # the rules table: JSON text or nested sequences
            if isinstance(value, str):
                value = json.loads(value)
            return tuple((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else
                          ((axes,) if axes else ())) for name, axes in value)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}: cannot read {text_or_value!r} as {getattr(hint, '__name__', hint)}") from e
    raise ConfigError(f"{key}: unsupported field type {hint}")


def replace(cfg: Config, **values: Any) -> Config:
    """A copy of `cfg` with `section__key=value` fields replaced (values already typed), e.g.
    `replace(cfg, train__accum_steps=4)`. Configs are frozen: deriving a value makes a new one."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, field = key.split("__")
        sections.setdefault(section, {})[field] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **f) for s, f in sections.items()})


def _set(cfg: Config, key: str, value: Any) -> Config:
    parts = key.split(".")
    node = getattr(cfg, parts[0], None) if len(parts) == 2 else None
    if node is None or not dataclasses.is_dataclass(node) or parts[1] not in {f.name for f in dataclasses.fields(node)}:
        near = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
    hints = typing.get_type_hints(type(node))
    typed = _coerce(value, hints[parts[1]], key)
    if isinstance(typed, float) and not math.isfinite(typed):  # nan passes every `> 0` check and trains on NaN
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return replace(cfg, **{f"{parts[0]}__{parts[1]}": typed})


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """Reads a TOML or JSON file of `[section] key = value` into flat `section.key` pairs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path}: use a .toml or .json file (got {path.suffix or 'no suffix'!r})")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
        tree = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    rules = tree.get("mesh", {}).pop("rules", None)
    flat = _flatten(tree)
    if rules is not None:
        flat["mesh.rules"] = list(rules.items()) if isinstance(rules, dict) else rules
    return flat


def build(overrides: list[str] | None = None, config_file: str | None = None, base: Config | None = None) -> Config:
    """Defaults (or `base`) <- preset <- file <- `key=value` overrides. Validation needs the device count and
    is separate (`validate`)."""
    cfg = base if base is not None else Config()
    pairs: list[tuple[str, Any, str]] = []
    if config_file:
        pairs += [(k, v, f"{config_file}: ") for k, v in read_file(config_file).items()]
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip(), ""))
    shape_keys = [(k, v) for k, v, _ in pairs if k in ("model.preset", "model.family")]
    if base is None and not shape_keys and any(k == "model.pretrained" for k, _, _ in pairs):
        shape_keys = [("model.preset", "custom")]  # as from_pretrained: the checkpoint's config.json is the shape
    for key, value in shape_keys:  # the preset and family first: a preset sets the shape, explicit keys win
        cfg = _set(cfg, key, value)
    if base is None or shape_keys:  # a given base (e.g. a saved spec) keeps its shape unless a preset is named
        cfg = dataclasses.replace(cfg, model=models.apply_preset(cfg.model))
    for key, value, where in pairs:
        try:
            cfg = _set(cfg, key, value)
            if key == "train.steps":  # the later of train.steps and train.epochs wins (e.g. over a recipe's)
                cfg = _set(cfg, "train.epochs", 0.0)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from e
    for key in SEEDS:  # before the data reads its own: numpy takes seeds in [0, 2**32)
        if not 0 <= _value(cfg, key) < 2**32:
            raise ConfigError(f"{key} must be in [0, 2**32), got {_value(cfg, key)}")
    return cfg


SEEDS = ("train.seed", "data.shuffle_seed")


def _value(cfg: Config, key: str) -> Any:
    """`cfg`'s value at `section.field`."""
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


MAX_STEPS = 2**31 - 1  # the train state's step counter and optax's are int32


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


MODEL_SIZES = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "num_labels")
_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_ZERO_MEANS = {"vocab_size": "the tokenizer's size", "sliding_window": "no window",  # model sizes where 0 is a default
               "sliding_window_pattern": "every layer alike", "rope_local_theta": "the other layers' rotary base",
               "query_scale": "the head width", "attention_softcap": "none", "logit_softcap": "none",
               "head_dim": "model.hidden_size / model.num_heads", "num_kv_heads": "model.num_heads",
               "embedding_size": "model.hidden_size"}


def _typed(value, hint) -> bool:
    """`value` is of the scalar type `hint` (an int is a number; a bool is nothing but a bool)."""
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if hint is float else hint)


def validate_model_shape(m: ModelConfig) -> None:
    """The model's fields typed and its sizes positive, before a family divides by or allocates them (a
    shape may come from a checkpoint's config.json, not only through `_coerce`)."""
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(m):
        value, hint = getattr(m, f.name), hints[f.name]
        if hint in _TYPES and not _typed(value, hint):
            raise ConfigError(f"model.{f.name} must be {_TYPES[hint]}, got {value!r}")
    for field in MODEL_SIZES:
        _positive(f"model.{field}", getattr(m, field))
    for field, zero in _ZERO_MEANS.items():
        if getattr(m, field) < 0:
            raise ConfigError(f"model.{field} must be >= 0 (0 = {zero}), got {getattr(m, field)}")
    if m.hidden_size % m.num_heads and not m.head_dim:  # every family splits its width into heads
        raise ConfigError(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    if m.num_kv_heads and m.num_heads % m.num_kv_heads:
        raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}")
    if m.activation and m.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {', '.join(ACTIVATIONS)} (or empty: the "
                          f"architecture's own), got {m.activation!r}")


def validate_inference(cfg: Config) -> None:
    """What inference (predict, evaluate, generate) reads of the train and data sections, checked."""
    for key in ("train.batch_size", "data.seq_len"):
        _positive(key, _value(cfg, key))


def validate(cfg: Config, num_devices: int) -> None:
    """Checks what can be checked before touching devices; raises ConfigError naming the key."""
    data, fsdp, model = mesh_lib.mesh_shape(cfg.mesh, num_devices)
    t = cfg.train
    validate_inference(cfg)
    for key in ("train.steps", "train.accum_steps", "train.log_every", "train.max_bad_steps",
                "checkpoint.max_to_keep", "optim.learning_rate", "data.buckets"):
        _positive(key, _value(cfg, key))
    validate_model_shape(cfg.model)
    for key in ("train.eval_every", "train.eval_batch_size", "train.stop_after", "checkpoint.every", "data.max_train",
                "data.max_eval", "train.patience", "train.profile"):
        if _value(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_value(cfg, key)}")
    if cfg.optim.flatten and fsdp * model > 1:
        raise ConfigError(f"optim.flatten keeps adamw's moments as replicated vectors: use it on a data-parallel mesh, "
                          f"not mesh.fsdp={fsdp} x mesh.model={model}")
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.accum_steps={t.accum_steps}")
    micro = rampup.micro_batch(t)
    if micro % (data * fsdp):
        raise ConfigError(
            f"train.batch_size={t.batch_size} (micro-batch {micro}) is not divisible by the batch-sharding "
            f"axes mesh.data x mesh.fsdp = {data} x {fsdp} = {data * fsdp}")
    _validate_rampup(t, data * fsdp)
    kind = cfg.model.problem_type
    if kind not in ("", "classification", "single_label_classification", *losses.FLOAT_HEADS):
        raise ConfigError(f"model.problem_type must be classification (HF's single_label_classification), "
                          f"multi_label_classification or regression, got {kind!r}")
    if kind in losses.FLOAT_HEADS and cfg.model.task != "sequence":
        raise ConfigError(f"model.problem_type={kind} reads whole texts (a tsv, csv or jsonl dataset), not a "
                          f"{cfg.model.task} task")
    if kind in losses.FLOAT_HEADS and cfg.model.label_smoothing:
        raise ConfigError(f"model.label_smoothing mixes one class's target with the others'; a {kind} head has "
                          f"no such target")
    if cfg.model.task == "qa" and (cfg.model.label_smoothing or cfg.model.z_loss):
        raise ConfigError("model.label_smoothing and model.z_loss are not applied to an answer-span head's start "
                          "and end (set 0)")
    if cfg.model.vocab_tiling < 1:
        raise ConfigError(f"model.vocab_tiling must be >= 1 (1 = the whole sequence at once), got {cfg.model.vocab_tiling}")
    if cfg.model.vocab_tiling > 1 and cfg.model.task != "lm":
        raise ConfigError(f"model.vocab_tiling tiles a language model's vocabulary logits; a {cfg.model.task} head "
                          f"has none (set 1)")
    for key in ("hidden_dropout", "attention_dropout", "lora_dropout", "label_smoothing"):
        if not 0.0 <= getattr(cfg.model, key) < 1.0:
            raise ConfigError(f"model.{key} must be in [0, 1), got {getattr(cfg.model, key)}")
    _validate_optim(cfg.optim, cfg.model)
    m = cfg.model
    if not 0.0 < m.mlm_probability < 1.0:
        raise ConfigError(f"model.mlm_probability must be in (0, 1), got {m.mlm_probability}")
    if not (0.0 <= m.mlm_mask_replace_prob <= 1.0 and 0.0 <= m.mlm_random_replace_prob <= 1.0
            and m.mlm_mask_replace_prob + m.mlm_random_replace_prob <= 1.0):
        raise ConfigError(f"model.mlm_mask_replace_prob={m.mlm_mask_replace_prob} and model.mlm_random_replace_prob="
                          f"{m.mlm_random_replace_prob} must be shares in [0, 1] adding up to at most 1")
    masked_lm = models.masked_lm(m)
    for key in ("mlm_probability", "mlm_mask_replace_prob", "mlm_random_replace_prob", "mlm_whole_word_mask"):
        if getattr(m, key) != getattr(ModelConfig, key) and not masked_lm:
            raise ConfigError(f"model.{key} masks an encoder's text corpus (masked language modelling), and this "
                              f"run trains no masked LM")
    if masked_lm and cfg.model.lora_rank:
        raise ConfigError("model.lora_rank with a masked LM: PEFT has no task type to save such an adapter as; "
                          "fine-tune the whole model")
    if t.epochs < 0:
        raise ConfigError(f"train.epochs must be >= 0 (0 = train.steps says how long), got {t.epochs}")
    if t.steps > MAX_STEPS:
        raise ConfigError(f"train.steps={t.steps} is past the {MAX_STEPS} steps a run can count (int32)")
    if not t.epochs:  # with train.epochs, run.setup builds the schedule once the data has set train.steps
        optim.schedule(cfg.optim, optim.scale_hparams(cfg.optim, t.batch_size, t.steps), t.steps)  # its own errors
    if cfg.checkpoint.best_mode not in ("auto", "max", "min"):
        raise ConfigError(f"checkpoint.best_mode must be auto, max or min, got {cfg.checkpoint.best_mode!r}")
    if t.patience and not cfg.checkpoint.best_metric:
        raise ConfigError("train.patience counts evaluations without a better checkpoint.best_metric: name one "
                          "(e.g. checkpoint.best_metric=loss)")
    if cfg.model.remat not in REMAT:
        raise ConfigError(f"model.remat must be one of {', '.join(REMAT)}, got {cfg.model.remat!r}")
    if cfg.model.attention_impl not in ATTENTION:
        raise ConfigError(f"model.attention_impl must be one of {', '.join(ATTENTION)}, "
                          f"got {cfg.model.attention_impl!r}")
    models.family(cfg.model).validate(cfg.model, cfg.data.seq_len, model)
    if cfg.precision.policy not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision.policy must be fp32, bf16 or fp16, got {cfg.precision.policy!r}")
    if t.loss_norm not in ("auto", "batch", "dataset"):
        raise ConfigError(f"train.loss_norm must be auto, batch or dataset, got {t.loss_norm!r}")
    if t.accum_impl not in ("scan", "multisteps"):
        raise ConfigError(f"train.accum_impl must be 'scan' or 'multisteps', got {t.accum_impl!r}")
    prune.validate(cfg.prune)
    compress.validate(cfg.model)
    lora.validate(cfg.model, cfg.prune)
    if cfg.model.quant:
        raise ConfigError("model.quant: an int8 model is for inference; train the float model, then "
                          "`jaxbatch compress` it")
    known = {name for name, _ in cfg.mesh.rules}
    for name in ("batch", "embed", "mlp", "heads", "kv", "vocab", "length"):
        if name not in known:
            raise ConfigError(f"mesh.rules has no rule for logical axis {name!r}")
    for name, axes in cfg.mesh.rules:
        for axis in axes:
            if axis not in mesh_lib.AXES:
                raise ConfigError(f"mesh.rules[{name!r}] names mesh axis {axis!r}; mesh axes are {mesh_lib.AXES}")


def _validate_optim(o, model) -> None:
    for key in ("b1", "b2", "momentum", "muon_momentum", "warmup_fraction", "min_lr_ratio"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(o, key)}")
    if not 0.0 < o.decay_fraction <= 1.0:
        raise ConfigError(f"optim.decay_fraction must be in (0, 1], got {o.decay_fraction}")
    if o.decay_shape not in optim.DECAY_SHAPES:
        raise ConfigError(f"optim.decay_shape must be one of {', '.join(optim.DECAY_SHAPES)}, got {o.decay_shape!r}")
    default = OptimConfig()
    for key in ("decay_fraction", "decay_shape"):  # set for another schedule, they would be ignored
        if getattr(o, key) != getattr(default, key) and o.schedule != "wsd":
            raise ConfigError(f"optim.{key} shapes the decay of optim.schedule=wsd, and this run's schedule "
                              f"is {o.schedule}")
    if o.name == "muon" and model.lora_rank:
        raise ConfigError("optim.name=muon orthogonalizes dense kernels, which LoRA freezes; its factors and heads "
                          "would all take AdamW: use optim.name=adamw")
    if o.muon_momentum != default.muon_momentum and o.name != "muon":
        raise ConfigError(f"optim.muon_momentum is optim.name=muon's, and this run's optimizer is {o.name} "
                          f"(optim.momentum is lars' and sgd's)")
    if o.min_lr_ratio and o.schedule == "constant":
        raise ConfigError("optim.min_lr_ratio is where a decay ends; optim.schedule=constant does not decay")
    if not o.eps > 0:  # 0 divides a parameter's zero gradient by a zero second moment: NaN
        raise ConfigError(f"optim.eps must be > 0, got {o.eps}")
    for key in ("weight_decay", "clip_norm", "warmup_steps", "reference_batch"):
        if not getattr(o, key) >= 0:
            raise ConfigError(f"optim.{key} must be >= 0, got {getattr(o, key)}")


def _validate_rampup(t, batch_shards: int) -> None:
    for key in ("rampup_samples", "rampup_start", "rampup_increment"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if not t.rampup_samples:
        return
    if not 0 < t.rampup_start < t.batch_size:
        raise ConfigError(f"train.rampup_start={t.rampup_start} must be between 1 and train.batch_size-1 "
                          f"({t.batch_size - 1}) when train.rampup_samples > 0")
    if t.accum_impl != "scan":
        raise ConfigError("train.rampup_samples needs train.accum_impl=scan (optax.MultiSteps has a fixed k)")
    micro = rampup.micro_batch(t)
    for b in rampup.distinct(t):
        k = rampup.accum_for(b, micro)
        if b % k or (b // k) % batch_shards:
            raise ConfigError(
                f"batch ramp-up reaches a global batch of {b} ({k} micro-batches of at most {micro}), which does "
                f"not split into equal micro-batches divisible by mesh.data x mesh.fsdp = {batch_shards}; choose "
                f"train.rampup_start and train.rampup_increment as multiples of the micro-batch {micro}")


# What a resumed run may change: cadence, stopping, where files live, the mesh and hosts (Orbax reshards),
# the attention kernel (the same function, rounded differently).
# Everything else (model shape, optimizer, data, seed, batch and accumulation, precision) is the run's
# identity: changing it in a used run dir is refused (see `drift`).
CHANGEABLE = ("train.steps", "train.epochs", "train.eval_every", "train.eval_batch_size", "train.log_every",
              "train.progress", "train.run_dir", "train.peak_tflops", "train.stop_after", "train.max_bad_steps",
              "train.auto_micro_batch", "train.memory_budget_gb", "train.patience", "train.profile",
              "model.attention_impl", "data.data_dir", "data.cache_dir", "data.num_eval", "data.max_eval",
              "checkpoint.", "mesh.", "distributed.")


def drift(saved: Config, new: Config) -> tuple[list[str], list[str]]:
    """(identity keys that differ, changeable keys that differ), each as 'key: saved -> new'."""
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(new))
    fixed, changed = [], []
    for key in a:
        if a[key] != b.get(key):
            (changed if key.startswith(CHANGEABLE) else fixed).append(f"{key}: {a[key]!r} -> {b.get(key)!r}")
    return fixed, changed


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict) -> Config:
    """Inverse of `to_dict` (e.g. the config saved in summary.json), with the same typing as overrides."""
    cfg = Config()
    for key, value in _flatten({k: v for k, v in tree.items() if k != "mesh"}).items():
        cfg = _set(cfg, key, value)
    for key, value in tree.get("mesh", {}).items():
        cfg = _set(cfg, f"mesh.{key}", value)
    return cfg


def describe(cfg: Config) -> str:
    """The config as `key = value` lines, printed at the start of every run."""
    flat = _flatten(to_dict(cfg))
    return "\n".join(f"  {k} = {v!r}" for k, v in flat.items())
