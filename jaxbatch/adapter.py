"""A LoRA run as a Hugging Face PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`), so
`PeftModel.from_pretrained(base, folder)` on the run's pretrained base gives the LoRA model's function.

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
adapter that would load as another model.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxbatch import folders, lora, models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.state import param_name

TASK_TYPES = {"sequence": "SEQ_CLS", "token": "TOKEN_CLS", "lm": "CAUSAL_LM"}  # PEFT's TaskType by model.task
PEFT_HEADS = ("classifier", "score")  # modules PEFT's SEQ_CLS / TOKEN_CLS models keep trainable by themselves
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
    parts: dict[str, list] = {}  # HF module -> [(first out row, rows, A (r, in), B (rows, r), out rows in all)]
    for name in flat:
        if not name.endswith(".lora_a"):
            continue
        stem = name[: -len(".lora_a")]
        a, b = flat[name], flat[f"{stem}.lora_b"]
        hf_name, how = mapping[f"{stem}.kernel"]
        a_t, b_t = a.reshape(-1, rank).T, b.reshape(rank, -1).T
        start, total = 0, b_t.shape[0]
        if how.startswith("part:"):  # a slice of a fused projection's output features
            _, axis, start, stop, _ = how.split(":")
            start = int(start)
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
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
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
    table = models.family(model_cfg).hf
    mapping = table.key_map(model_cfg)
    flat = _flat_params(params)
    trains = dict(zip(flat, jax.tree.leaves(lora.trainable(abstract_params))))
    _check_frozen(flat, trains, model_cfg, mapping, base)
    tensors, ranks, parts = _factors(flat, model_cfg, mapping, table.tensor_name)
    heads = sorted({_module(table.tensor_name(mapping[n][0], model_cfg)) for n, t in trains.items()
                    if t and not n.endswith((".lora_a", ".lora_b"))})
    task = TASK_TYPES[model_cfg.task]
    for name, t in trains.items():
        if t and not name.endswith((".lora_a", ".lora_b")):
            hf_name, how = mapping[name]
            tensors[f"base_model.model.{table.tensor_name(hf_name, model_cfg)}"] = hf.to_theirs(flat[name], how)
    # PEFT wraps a task model's `classifier` whole; a head module under it is then saved through that wrapper
    saved = sorted({next((p for p in PEFT_HEADS if m == p or m.startswith(p + ".")), m) if task != "CAUSAL_LM" else m
                    for m in heads})
    layouts = {mapping[f"{n[: -len('.lora_a')]}.kernel"][1].split(":")[-1] for n in flat if n.endswith(".lora_a")}
    alpha = model_cfg.lora_alpha or model_cfg.lora_rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    config_json = {
        "peft_type": "LORA", "task_type": task, "base_model_name_or_path": str(base.resolve()),
        "r": model_cfg.lora_rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(parts), "modules_to_save": saved or None,
        "rank_pattern": ranks, "alpha_pattern": {m: alpha * r / model_cfg.lora_rank for m, r in ranks.items()},
        "fan_in_fan_out": bool(layouts & set(CONV1D)), "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
    }
    with folders.new_folder(folder) as partial:
        hf.save_tensors(tensors, partial / "adapter_model.safetensors")
        (partial / "adapter_config.json").write_text(json.dumps(config_json, indent=2))
        (partial / "README.md").write_text(_readme(model_cfg, task, base, table.hf_config(model_cfg, label_names)))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
    return Path(folder)


def _readme(model_cfg, task: str, base: Path, hf_json: dict) -> str:
    """How to load the adapter: the base class with the head's shape and labels as `export` writes them."""
    auto = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
            "CAUSAL_LM": "AutoModelForCausalLM"}[task]
    head = "".join(f", {k}={hf_json[k]!r}" for k in ("num_labels", "id2label", "problem_type")
                   if task != "CAUSAL_LM" and hf_json.get(k) is not None)
    return (f"# LoRA adapter (written by jaxbatch)\n\nRank {model_cfg.lora_rank} on {model_cfg.lora_targets}, "
            f"alpha {model_cfg.lora_alpha or model_cfg.lora_rank}, on the base model in `{base.resolve()}`.\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({str(base.resolve())!r}{head})\n"
            f"model = PeftModel.from_pretrained(base, 'THIS_FOLDER')\n```\n")
