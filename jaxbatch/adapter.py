"""Hugging Face PEFT LoRA adapter folders (`adapter_config.json` + `adapter_model.safetensors`), both ways: a
LoRA run exported as one, so `PeftModel.from_pretrained(base, folder)` on the run's pretrained base gives the
LoRA model's function, and one read back as `model.pretrained` (train on, predict, evaluate, generate): its
base folder's weights, then its factors and saved head.

PEFT's layout: each targeted module holds `lora_A.weight` (rank, in features) and `lora_B.weight` (out
features, rank) beside its frozen weight, scaled by lora_alpha / r; `modules_to_save` are whole modules
trained beside the factors (the task head), saved as the module's own tensors. Our factors are the dense
layer's `lora_a` (its input dims..., rank) and `lora_b` (rank, its output dims...), so flattening the input
and output dims gives PEFT's matrices in any family's key layout (`models.hf_part` slices of a fused HF
tensor become one factor pair of the summed rank whose B holds each part's rows, with `rank_pattern` /
`alpha_pattern` keeping the scale). The family's HF table (`hf.py`) names the modules; nothing here names a
model.

An adapter is only the difference from its base, so the frozen parameters must still be the base folder's:
export compares every one of them with the folder it names (`base_model_name_or_path`) and refuses to write an
adapter that would load as another model. Reading one, each module's own scale (`alpha_pattern`,
`rank_pattern`, rsLoRA's alpha / sqrt(r)) is folded into its B, and a lower rank is padded with zeros, so one
rank and one scale hold them all with the same function.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxbatch import folders, lora, models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.state import param_name

TASK_TYPES = {"sequence": "SEQ_CLS", "token": "TOKEN_CLS", "lm": "CAUSAL_LM",  # PEFT's TaskType by model.task
              "qa": "QUESTION_ANS"}
CONFIG, WEIGHTS, PREFIX = "adapter_config.json", ("adapter_model.safetensors", "adapter_model.bin"), "base_model.model."
PEFT_HEADS = ("classifier", "score", "qa_outputs")  # modules PEFT's task models keep trainable by themselves
CONV1D = ("copy", "heads_in", "heads_last")  # hf.to_theirs layouts of a kernel stored (in, out): transformers' Conv1D


def _module(tensor: str) -> str:
    return tensor.rsplit(".", 1)[0]


def _flat_params(params) -> dict[str, np.ndarray]:
    return {param_name(p): np.asarray(jax.device_get(x), np.float32)
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


def _check_frozen(flat: dict, trains: dict, model_cfg, mapping: dict, base: Path) -> None:
    """Every frozen parameter equals the base folder's tensor (read as `load_params` reads it), bit for bit."""
    from jaxbatch import hf

    table = models.family(model_cfg).hf
    tensors = table.unfuse({table.normalize_name(k): v for k, v in hf.read_tensors(base).items()}, model_cfg)
    for name, x in flat.items():
        if trains[name]:
            continue
        hf_name, how = mapping[name]
        if hf_name not in tensors:
            raise CheckpointError(f"{base}: has no {hf_name} for the frozen parameter {name}; a PEFT adapter loads "
                                  f"onto that folder, so export the merged model instead (without --adapter)")
        if not np.array_equal(hf.to_ours(tensors[hf_name].astype(np.float32), how, x.shape), x):
            raise CheckpointError(f"{base}: {hf_name} differs from the run's frozen {name} (not the folder the run "
                                  f"was trained from?); export the merged model instead (without --adapter)")


def _factors(flat: dict, model_cfg, mapping: dict, tensor_name) -> tuple[dict, dict, dict]:
    """PEFT's factor tensors by module, and each module's rank where it differs from model.lora_rank (a fused
    HF tensor holding several targeted parts)."""
    rank = model_cfg.lora_rank
    parts: dict[str, list] = {}  # HF module -> [(its first output row, A (r, in), B (rows, r), the module's rows)]
    for name in flat:
        if not name.endswith(".lora_a"):
            continue
        stem = name[: -len(".lora_a")]
        a, b = flat[name], flat[f"{stem}.lora_b"]
        hf_name, how = mapping[f"{stem}.kernel"]
        a_t, b_t = a.reshape(-1, rank).T, b.reshape(rank, -1).T
        start, total = 0, b_t.shape[0]
        if how.startswith("part:"):  # a slice of a fused projection's output features
            start = int(how.split(":")[2])
            total = max(int(h.split(":")[3]) for n, (t, h) in mapping.items() if t == hf_name and n.endswith(".kernel"))
        parts.setdefault(_module(tensor_name(hf_name, model_cfg)), []).append((start, a_t, b_t, total))
    tensors, ranks = {}, {}
    for module, found in parts.items():
        found.sort(key=lambda p: p[0])
        total, r = found[0][3], rank * len(found)
        a = np.concatenate([p[1] for p in found], axis=0)
        b = np.zeros((total, r), np.float32)
        for i, (start, _, b_t, _) in enumerate(found):
            b[start: start + b_t.shape[0], i * rank: (i + 1) * rank] = b_t
        tensors[f"{PREFIX}{module}.lora_A.weight"], tensors[f"{PREFIX}{module}.lora_B.weight"] = a, b
        if r != rank:
            ranks[module] = r
    return tensors, ranks, parts


def export(params, abstract_params, model_cfg, folder: str | Path, tokenizer=None,
           label_names: list[str] | None = None) -> Path:
    """Writes the LoRA run's factors and trained head as a PEFT LoRA adapter of its `model.pretrained` folder,
    into a new folder (never overwriting one)."""
    from jaxbatch import hf

    if not model_cfg.lora_rank:
        raise ConfigError("--adapter writes a LoRA run's factors; this run trained every parameter (model.lora_rank "
                          "is 0), so export the whole model (without --adapter)")
    if not model_cfg.pretrained:
        raise ConfigError("--adapter needs the base model the run started from, and this one was randomly "
                          "initialised (no model.pretrained); export the merged model instead (without --adapter)")
    base = hf.resolve(model_cfg.pretrained)
    base = base_folder(base) if is_adapter(base) else base  # a run that started from an adapter: its base
    table = models.family(model_cfg).hf
    mapping = table.key_map(model_cfg)
    flat = _flat_params(params)
    trains = dict(zip(flat, jax.tree.leaves(lora.trainable(abstract_params))))
    _check_frozen(flat, trains, model_cfg, mapping, base)
    tensors, ranks, parts = _factors(flat, model_cfg, mapping, table.tensor_name)
    head_params = [n for n, t in trains.items() if t and not n.endswith((".lora_a", ".lora_b"))]
    heads = sorted({_module(table.tensor_name(mapping[n][0], model_cfg)) for n in head_params})
    task = TASK_TYPES[model_cfg.task]
    for name in head_params:
        hf_name, how = mapping[name]
        tensors[f"{PREFIX}{table.tensor_name(hf_name, model_cfg)}"] = hf.to_theirs(flat[name], how)
    # PEFT wraps a task model's `classifier` whole; a head module under it is then saved through that wrapper
    saved = sorted({next((p for p in PEFT_HEADS if m == p or m.startswith(p + ".")), m) if task != "CAUSAL_LM" else m
                    for m in heads})
    layouts = {mapping[f"{n[: -len('.lora_a')]}.kernel"][1].split(":")[-1] for n in flat if n.endswith(".lora_a")}
    alpha = model_cfg.lora_alpha or model_cfg.lora_rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    config_json = {
        "peft_type": "LORA", "task_type": task, "base_model_name_or_path": str(base.resolve()),
        "r": model_cfg.lora_rank, "lora_alpha": alpha, "lora_dropout": model_cfg.lora_dropout, "bias": "none",
        "target_modules": sorted(parts), "modules_to_save": saved or None,
        "rank_pattern": ranks, "alpha_pattern": {m: lora.scale(model_cfg) * lora.divisor(r, model_cfg.lora_rslora)
                                                 for m, r in ranks.items()},
        "fan_in_fan_out": bool(layouts & set(CONV1D)), "use_rslora": model_cfg.lora_rslora, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
    }
    hf_json = table.hf_config(model_cfg, label_names)
    hf.classifier_padding(hf_json, tokenizer)
    with folders.new_folder(folder) as partial:
        hf.save_tensors(tensors, partial / "adapter_model.safetensors")
        (partial / "adapter_config.json").write_text(json.dumps(config_json, indent=2))
        (partial / "README.md").write_text(_readme(model_cfg, task, base, hf_json))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
    return Path(folder)


def _readme(model_cfg, task: str, base: Path, hf_json: dict) -> str:
    """How to load the adapter: the base class with the head's shape and labels as `export` writes them (and a
    causal classifier's pad id, which its base's config.json lacks)."""
    auto = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
            "CAUSAL_LM": "AutoModelForCausalLM", "QUESTION_ANS": "AutoModelForQuestionAnswering"}[task]
    head = "".join(f", {k}={hf_json[k]!r}" for k in ("num_labels", "id2label", "problem_type", "pad_token_id")
                   if task != "CAUSAL_LM" and hf_json.get(k) is not None)
    return (f"# LoRA adapter (written by jaxbatch)\n\nRank {model_cfg.lora_rank} on {model_cfg.lora_targets}, "
            f"alpha {model_cfg.lora_alpha or model_cfg.lora_rank}, on the base model in `{base.resolve()}`.\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({str(base.resolve())!r}{head})\n"
            f"model = PeftModel.from_pretrained(base, 'THIS_FOLDER')\n```\n" + (
                "\nPEFT's question-answering wrapper does not pass `token_type_ids` on to the model (PEFT 0.21): call "
                "`model.base_model.model(...)`, or `model.merge_and_unload()`, where the question and context need "
                "them.\n" if task == "QUESTION_ANS" else ""))


def is_adapter(folder: Path) -> bool:
    """A PEFT adapter folder (its weights are a base model's plus these)."""
    return (folder / CONFIG).is_file() and not (folder / "config.json").is_file()


def read_config(folder: Path) -> dict:
    """adapter_config.json, checked to be a LoRA adapter jaxbatch runs exactly."""
    from jaxbatch import hf

    path = folder / CONFIG
    cfg = hf.read_json_object(path)
    unsupported = {"peft_type": (cfg.get("peft_type"), "LORA"), "use_dora": (bool(cfg.get("use_dora")), False),
                   "bias": (cfg.get("bias", "none"), "none")}
    for key, (value, wanted) in unsupported.items():
        if value != wanted:
            raise CheckpointError(f"{path}: {key} {value!r} is not read (only LoRA adapters with {key} {wanted!r})")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise CheckpointError(f"{path}: {key} must be a positive number, got {cfg.get(key)!r}")
    return cfg


def base_folder(folder: Path) -> Path:
    """The base model the adapter was trained on: `base_model_name_or_path`, a local folder (or known name)."""
    from jaxbatch import hf

    name = read_config(folder).get("base_model_name_or_path")
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{folder / CONFIG}: no base_model_name_or_path; write there the folder of the base "
                              f"model the adapter was trained on")
    try:
        return hf.resolve(name, key=f"{folder / CONFIG}: base_model_name_or_path")
    except CheckpointError as e:
        raise CheckpointError(f"{e}; jaxbatch reads local folders: download the base model and write its folder "
                              f"there") from e


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The adapter's tensors by the base model's names (PEFT's `base_model.model.` prefix dropped)."""
    from jaxbatch import hf

    for name in WEIGHTS:
        if (folder / name).is_file():
            return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in hf.read_file(folder / name).items()}
    raise CheckpointError(f"{folder}: neither {' nor '.join(WEIGHTS)}")


def _pattern(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matching the module path's end, as regex."""
    import re

    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _targets(model_cfg, tensor_name) -> dict[str, list]:
    """HF module -> [(our dense layer's path, its key-map layout)] for every layer LoRA can target."""
    out: dict[str, list] = {}
    for name, (hf_name, how) in models.family(model_cfg).hf.key_map(model_cfg).items():
        stem = name[: -len(".kernel")]
        if name.endswith(".kernel") and stem.rsplit(".", 1)[-1] in lora.TARGETS:
            out.setdefault(_module(tensor_name(hf_name, model_cfg)), []).append((stem, how))
    return out


def _factor_modules(folder: Path, tensors: dict, model_cfg) -> dict[str, tuple[np.ndarray, np.ndarray, list, float]]:
    """HF module -> (A (r, in), B (out, r), our layers in it, the module's scale)."""
    cfg = read_config(folder)
    table = models.family(model_cfg).hf
    targets = _targets(model_cfg, table.tensor_name)
    found = {}
    for key in tensors:
        if ".lora_" in key and not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CheckpointError(f"{folder}: {key} is not read (LoRA factors of dense layers only, not of "
                                  f"embeddings or convolutions)")
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        if module not in targets:
            raise CheckpointError(f"{folder}: LoRA factors for {module}, which is not a dense layer jaxbatch trains "
                                  f"LoRA on ({', '.join(lora.TARGETS)})")
        a, b = tensors[key], tensors.get(f"{module}.lora_B.weight")
        if b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{folder}: {module}'s lora_A {a.shape} and lora_B "
                                  f"{None if b is None else b.shape} are not a factor pair")
        r = a.shape[0]
        alpha = _pattern(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
        found[module] = (a, b, targets[module], alpha / lora.divisor(r, bool(cfg.get("use_rslora"))))
    if not found:
        raise CheckpointError(f"{folder}: no LoRA factors (no *.lora_A.weight tensor)")
    return found


def configure(model_cfg, folder: Path):
    """The base-shaped model config with the adapter's LoRA (rank: the largest module's; scale: the adapter's
    own alpha / r, or / sqrt(r) under rsLoRA), task (its task_type) and, for a head it saves, label count."""
    import dataclasses

    cfg, tensors = read_config(folder), read_tensors(folder)
    task = {v: k for k, v in TASK_TYPES.items()}.get(cfg.get("task_type"), model_cfg.task)
    model_cfg = dataclasses.replace(model_cfg, task=task)
    found = _factor_modules(folder, tensors, model_cfg)
    rank = max(a.shape[0] for a, _, _, _ in found.values())
    if model_cfg.lora_rank not in (0, rank):
        raise ConfigError(f"model.lora_rank={model_cfg.lora_rank}, but {folder} holds factors of rank {rank}")
    rslora = bool(cfg.get("use_rslora"))
    alpha = cfg["lora_alpha"] * lora.divisor(rank, rslora) / lora.divisor(cfg["r"], rslora)  # its scale at `rank`
    names = sorted({stem.rsplit(".", 1)[-1] for _, _, layers, _ in found.values() for stem, _ in layers})
    dropout = cfg.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CheckpointError(f"{folder / CONFIG}: lora_dropout must be in [0, 1), got {dropout!r}")
    model_cfg = dataclasses.replace(model_cfg, lora_rank=rank, lora_alpha=alpha, lora_targets=",".join(names),
                                    lora_rslora=rslora, lora_dropout=float(dropout))
    return dataclasses.replace(model_cfg, num_labels=_num_labels(model_cfg, tensors))


def _num_labels(model_cfg, tensors: dict) -> int:
    """The label count of a saved head: the size of its `labels` axis (the model's own otherwise)."""
    from jaxbatch import state as state_lib

    if model_cfg.task == "lm":
        return model_cfg.num_labels
    table = models.family(model_cfg).hf
    mapping = table.key_map(model_cfg)
    _, abstract = state_lib.abstract_model(model_cfg, "fp32")
    for path, v in jax.tree_util.tree_leaves_with_path(abstract, is_leaf=lambda x: hasattr(x, "get_metadata")):
        axes = v.get_metadata().get("logical_axes") or ()
        name = param_name(path)
        tensor = tensors.get(table.tensor_name(mapping[name][0], model_cfg)) if name in mapping else None
        if "labels" in axes and tensor is not None:
            others = int(np.prod([n for n, a in zip(v.shape, axes) if a != "labels"]))
            return tensor.size // others
    return model_cfg.num_labels


def values(folder: Path, model_cfg, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Our parameters the adapter sets ({name: array of `shapes[name]`}): each targeted layer's factors (the
    module's scale over ours folded into B, padded to model.lora_rank) and the head modules it saves."""
    from jaxbatch import hf

    tensors = read_tensors(folder)
    rank, scale = model_cfg.lora_rank, lora.scale(model_cfg)
    out = {}
    for module, (a, b, layers, module_scale) in _factor_modules(folder, tensors, model_cfg).items():
        r = a.shape[0]
        for stem, how in layers:
            rows = b
            if how.startswith("part:"):  # this layer's slice of a fused projection's output features
                _, _, start, stop, _ = how.split(":")
                rows = b[int(start): int(stop)]
            lora_a, lora_b = np.zeros((a.shape[1], rank), np.float32), np.zeros((rank, rows.shape[0]), np.float32)
            lora_a[:, :r], lora_b[:r] = a.T, rows.T * (module_scale / scale)
            for name, x in ((f"{stem}.lora_a", lora_a), (f"{stem}.lora_b", lora_b)):
                if x.size != int(np.prod(shapes[name])):
                    raise CheckpointError(f"{folder}: {module}'s factors do not fit {name} {shapes[name]}")
                out[name] = x.reshape(shapes[name])
    table = models.family(model_cfg).hf
    by_tensor = {table.tensor_name(hf_name, model_cfg): (name, how)
                 for name, (hf_name, how) in table.key_map(model_cfg).items()}
    for key, x in tensors.items():
        if ".lora_" in key:
            continue
        if key not in by_tensor:
            raise CheckpointError(f"{folder}: saved tensor {key} is not a parameter of this model")
        name, how = by_tensor[key]
        try:
            out[name] = hf.to_ours(x.astype(np.float32), how, shapes[name])
        except ValueError as e:
            raise CheckpointError(f"{folder}: tensor {key} of shape {x.shape} {e} for {name}") from e
    return out
