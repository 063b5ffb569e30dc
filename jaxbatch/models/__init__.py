"""Model families: the one place where models are named.

A family bundles what the core needs to train, evaluate, plan and convert a model without knowing what it
is: the NNX module and its presets, the batch it consumes, its loss and metric sums, its FLOPs, its config
checks, and its Hugging Face conversion. Every parameter carries `logical_axes` (sharding) and `decay`
(weight decay) metadata, so optimizers and meshes read the model, not its names. A new family is a module
that calls `register`; nothing in the core changes (tests/models/test_registry.py defines one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.models.layers import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class HfMapping:
    """How a family's parameters map to a Hugging Face folder (see hf.py).

    key_map(model_cfg) -> {our parameter name: (HF tensor name, layout)}; configure(model_cfg, hf_config)
    -> model_cfg with the shape of that config.json; hf_config(model_cfg, label_names) -> config.json;
    model_types: the config.json `model_type`s this family reads; tensor_name(name, model_cfg) -> the
    stored name (task prefixes); expected_unused(name, model_cfg): stored tensors we may ignore;
    normalize_name(name): a stored name as key_map spells it; unfuse(tensors, model_cfg): the stored tensors
    with fused ones split into those key_map names (Phi-3's qkv_proj)."""

    model_types: tuple[str, ...]
    key_map: Callable
    configure: Callable
    hf_config: Callable
    tensor_name: Callable = lambda name, model_cfg: name
    expected_unused: Callable = lambda name, model_cfg: False
    normalize_name: Callable = lambda name: name
    unfuse: Callable = lambda tensors, model_cfg: tensors


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family supplies. `build(model_cfg, rngs=, dtype=)` returns the NNX module;
    `forward(model, batch, deterministic=, rngs=)` its outputs; `loss_sums(outputs, batch, model_cfg)` ->
    (float32 sums incl. `loss_sum` and `weight`, predictions dict); `batch_shapes(model_cfg, batch, seq_len)`
    -> {key: shape} (int32 arrays but `labels`, see `abstract_batch`; IGNORE_INDEX or NaN where no loss);
    `train_flops_per_token(model_cfg, seq_len)`; `validate(model_cfg, seq_len, model_axis)` raises
    ConfigError; `describe(model_cfg)` is the one-line summary a run prints; `tokenizer(folder or
    vocabulary list)` builds the tokenizer when no pretrained folder brings one; `max_seq_len(model_cfg)` is
    the longest row its position table holds (what inference on a folder caps `data.seq_len` at); `masked`:
    its `lm` task is masked language modelling (an encoder: data/masking.py), not next-token prediction."""

    name: str
    presets: Mapping[str, Mapping[str, Any]]
    build: Callable
    forward: Callable
    loss_sums: Callable
    batch_shapes: Callable
    train_flops_per_token: Callable
    validate: Callable
    describe: Callable
    tokenizer: Callable
    hf: HfMapping | None = None
    max_seq_len: Callable = lambda model_cfg: model_cfg.max_position_embeddings
    masked: bool = False


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds a family (and its presets, whose names must be new) to the registry."""
    taken = {p for f in _FAMILIES.values() if f.name != family.name for p in f.presets} & set(family.presets)
    if taken:
        raise ValueError(f"family {family.name!r}: preset names {sorted(taken)} are taken by another family")
    _FAMILIES[family.name] = family
    return family


def names() -> list[str]:
    return sorted(_FAMILIES)


def family_named(name: str) -> Family:
    return _FAMILIES[name]


def preset_family(preset: str) -> str | None:
    return next((f.name for f in _FAMILIES.values() if preset in f.presets), None)


def family(model_cfg) -> Family:
    """The family of a (preset-applied) ModelConfig."""
    name = model_cfg.family or preset_family(model_cfg.preset)
    if not name:
        raise ConfigError(f"model.preset=custom needs model.family ({', '.join(names())}) or a model.pretrained folder")
    if name not in _FAMILIES:
        raise ConfigError(f"model.family={name!r} is unknown; families: {', '.join(names())}")
    return _FAMILIES[name]


def masked_lm(model_cfg) -> bool:
    """Whether the model trains a masked language model: the lm task of a family whose lm task is masked (an
    encoder), not next-token prediction."""
    return model_cfg.task == "lm" and family(model_cfg).masked


def abstract_batch(model_cfg, batch: int, seq_len: int, shardings: Mapping | None = None) -> dict:
    """The family's batch as ShapeDtypeStructs (with `shardings`, when given): int32, but float32 `labels`
    for regression targets (losses.label_dtype). What the steps compile for and the planner measures."""
    import jax

    from jaxbatch import losses

    shapes = family(model_cfg).batch_shapes(model_cfg, batch, seq_len)
    dtypes = {"labels": losses.label_dtype(model_cfg)}
    return {k: jax.ShapeDtypeStruct(s, dtypes.get(k, "int32"), **({"sharding": shardings[k]} if shardings else {}))
            for k, s in shapes.items()}


def label_shape(model_cfg, batch: int, seq_len: int) -> tuple[int, ...]:
    """A head's labels' shape: a tag or masked token per position, a start and an end token per window (qa),
    outputs per example (multi-label, several scores) or one label per example (a family's `batch_shapes`)."""
    from jaxbatch import losses

    if model_cfg.task in ("token", "lm"):
        return batch, seq_len
    if model_cfg.task == "qa":
        return batch, 2
    return (batch, model_cfg.num_labels) if losses.per_output(model_cfg) else (batch,)


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    """The family's matmul FLOPs of a training step per token (what MFU counts); under LoRA (model.lora_rank)
    two thirds of it, since the frozen layers' weight-gradient matmuls are not computed: a lower bound (the
    attention core's and the head's gradients still are), so MFU is never overstated."""
    flops = family(model_cfg).train_flops_per_token(model_cfg, seq_len)
    return flops * 2 / 3 if model_cfg.lora_rank else flops


def train_temp_floats(model_cfg, tokens: int, seq_len: int) -> float:
    """Roughly how many floats a training step's temporaries hold on a device computing `tokens` tokens of
    `seq_len`-long rows: the parameters' gradients (a dense Transformer's parameters, counted from its shape) and
    the activations kept per token (each layer's, its attention probabilities, the output's logits). Within
    0.8-1.4x of XLA:CPU's buffer assignment for MiniLM, bert-base, GPT-2 124M and the tiny models (benchmarks/
    README.md, "One malloc arena when the step needs it"); for host settings before JAX starts, never for
    planning memory (memory.py compiles the step for that)."""
    m = model_cfg
    h, i, layers = m.hidden_size, m.intermediate_size, m.num_layers
    params = m.vocab_size * h + layers * (4 * h * h + 3 * h * i)
    outputs = m.vocab_size if m.task == "lm" else m.num_labels
    return params + tokens * (layers * (4 * h + 2 * i + 6 * m.num_heads * seq_len) + 2 * outputs)


def check_shape(model_cfg, shape: Mapping[str, Any]) -> None:
    """A named preset must agree with the shape a checkpoint's config.json gives; 'custom' takes it as is."""
    if model_cfg.preset == "custom":
        return
    bad = {f: (getattr(model_cfg, f), v) for f, v in shape.items() if getattr(model_cfg, f) != v}
    if bad:
        detail = ", ".join(f"{f}: preset {a} vs checkpoint {b}" for f, (a, b) in bad.items())
        raise ConfigError(f"model.preset={model_cfg.preset!r} does not match config.json ({detail}); "
                          f"use model.preset=custom to take the shape from the checkpoint")


def hf_part(axis: int, start: int, stop: int, inner: str) -> str:
    """A key-map layout: the parameter is stored in a slice of a fused HF tensor (GPT-2's c_attn, Phi-3's
    qkv_proj and gate_up_proj), entries start:stop along `axis`, laid out within as `inner`."""
    return f"part:{axis}:{start}:{stop}:{inner}"


def hf_activation(hf: Mapping[str, Any], key: str, default: str) -> str:
    """config.json's MLP activation (`key`: hidden_act, activation_function), one we run (layers.ACTIVATIONS),
    as model.activation: '' for the architecture's `default`, so a preset equals the checkpoint it names."""
    name = hf.get(key, default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise CheckpointError(f"config.json: {key} {name!r} is not supported (only {', '.join(ACTIVATIONS)})")
    return "" if name == default else name


def head_summary(model_cfg) -> str:
    """A classifier head as a run's summary line names it: its task, kind and outputs."""
    from jaxbatch import losses

    task, n = model_cfg.task, model_cfg.num_labels
    if task == "qa":
        return "qa: answer spans (a start and an end logit per token)"
    if model_cfg.problem_type == losses.REGRESSION:
        return f"{task} regression, " + (f"{n} scores" if n > 1 else "one score")
    if model_cfg.problem_type == losses.MULTI_LABEL:
        return f"{task} multi-label classification, {n} labels"
    return f"{task} classification, {n} labels"


def hf_head(model_cfg, hf: Mapping[str, Any], heads: Mapping[str, str]) -> dict:
    """The task a config.json's architecture names by its suffix (`heads`: suffix -> task), and a classifier's
    label count and problem_type (regression, one output, or multi-label: model.problem_type unless it is
    set); {} for a checkpoint without such a head."""
    from jaxbatch import losses

    task = next((t for a in hf.get("architectures") or () for end, t in heads.items() if str(a).endswith(end)), None)
    if task in (None, "lm"):
        return {"task": task} if task else {}
    # transformers writes neither id2label nor num_labels for its default of two labels
    wanted = dict(task=task, num_labels=len(hf.get("id2label") or {}) or hf.get("num_labels", 2))
    kind = hf.get("problem_type") or ("regression" if wanted["num_labels"] == 1 else "single_label_classification")
    if task == "sequence" and kind in losses.FLOAT_HEADS:
        wanted.update(problem_type=model_cfg.problem_type or kind)
    elif task == "sequence" and kind != "single_label_classification":
        raise CheckpointError(f"config.json: a {kind} head ({wanted['num_labels']} output(s)) is not supported; "
                              f"jaxbatch classifies each text into one of its labels or into several "
                              f"(multi_label_classification), or scores it (regression)")
    return wanted


def hf_labels(model_cfg, label_names: list[str] | None = None) -> dict:
    """A classifier's config.json keys: num_labels, id2label and label2id (HF's LABEL_i without names), and a
    float head's problem_type. A one-logit binary head has no transformers class: refused."""
    from jaxbatch import losses

    regression = model_cfg.problem_type == losses.REGRESSION
    if model_cfg.num_labels == 1 and model_cfg.problem_type != losses.MULTI_LABEL and not regression:
        raise ConfigError("a one-logit binary head has no Hugging Face class that reads it so (HF takes one logit "
                          "for a regression); train it with model.num_labels=2 to export")
    labels = ["LABEL_0"] if regression and model_cfg.num_labels == 1 else (
        label_names or [f"LABEL_{i}" for i in range(model_cfg.num_labels)])
    return {"num_labels": model_cfg.num_labels, "id2label": {str(i): n for i, n in enumerate(labels)},
            "label2id": {n: i for i, n in enumerate(labels)},
            **({"problem_type": model_cfg.problem_type} if model_cfg.problem_type in losses.FLOAT_HEADS else {})}


def apply_preset(model_cfg):
    """A ModelConfig with its preset's family and shape filled in ('custom' keeps the fields, and needs
    `model.family`)."""
    if model_cfg.preset == "custom":  # the family comes from model.family (or a pretrained folder's config.json)
        if model_cfg.family:
            family(model_cfg)  # known?
        return model_cfg
    owner = preset_family(model_cfg.preset)
    if owner is None:
        every = [p for f in _FAMILIES.values() for p in f.presets]
        raise ConfigError(f"model.preset={model_cfg.preset!r} is unknown; choose from {', '.join(every)} or 'custom'")
    if model_cfg.family and model_cfg.family != owner:
        raise ConfigError(f"model.preset={model_cfg.preset!r} belongs to family {owner!r}, not "
                          f"model.family={model_cfg.family!r}")
    return dataclasses.replace(model_cfg, family=owner, **_FAMILIES[owner].presets[model_cfg.preset])


# the built-in families register themselves on import
from jaxbatch.models import albert, bert, decoder, distilbert, electra, roberta  # noqa: E402,F401
