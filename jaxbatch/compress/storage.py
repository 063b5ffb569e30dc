"""The compressed model folder: what `jaxbatch compress` writes and `run.restore` reads (so predict,
evaluate and generate take it like a run dir, without a flag).

    OUT/compressed.json   the resolved spec (with model.quant / model.lowrank), one entry per parameter
                          (shape, dtype, packing, sha256), and the pass's report
    OUT/model.safetensors the tensors: int8 values and float32 scales for quantized layers; float32 else
    OUT/tokenizer/        the run's tokenizer

Sparse packing: a tensor with enough zeros (pruned kernels) is stored as its non-zero values plus a bitmask
(1 bit per weight, `np.packbits`): 50% sparse float32 takes 2.125 bytes/weight instead of 4, int8 0.625
instead of 1 (2:4 is 50% sparse, so the same holds). It is used only where it is smaller. safetensors is
the format HF users already load and inspect; every tensor's sha256 is checked on load, so a damaged file is
refused with its name rather than producing wrong predictions. The folder is written under a temporary name
and renamed when complete, and an existing OUT is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from jaxbatch import config, folders
from jaxbatch.errors import CheckpointError

MANIFEST = "compressed.json"
WEIGHTS = "model.safetensors"


def _named(params: nnx.State) -> list[tuple[str, object]]:
    from jaxbatch.state import param_name

    return [(param_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(params)]


def pack(x: np.ndarray) -> dict[str, np.ndarray] | None:
    """{values, bits} when that is smaller than the dense tensor, else None."""
    nonzero = x != 0
    packed = int(nonzero.sum()) * x.itemsize + (x.size + 7) // 8
    if packed >= x.nbytes:
        return None
    return {"values": x[nonzero], "bits": np.packbits(nonzero.reshape(-1))}


def unpack(values: np.ndarray, bits: np.ndarray, shape, dtype) -> np.ndarray:
    size = int(np.prod(shape))
    nonzero = np.unpackbits(bits, count=size).astype(bool)
    out = np.zeros(size, dtype)
    out[nonzero] = values
    return out.reshape(shape)


def _digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def save(out: str | Path, spec: config.Config, params: nnx.State, tokenizer, report: dict) -> Path:
    """Writes the folder (atomically: OUT.partial, then renamed). Refuses an existing, non-empty OUT."""
    with folders.new_folder(out) as partial:
        tensors, entries = {}, {}
        for name, x in _named(params):
            x = np.asarray(jax.device_get(x))
            entry = {"shape": list(x.shape), "dtype": str(x.dtype), "sha256": _digest(x)}
            packed = pack(x)
            if packed is None:
                tensors[name] = x
            else:
                tensors[f"{name}:values"], tensors[f"{name}:bits"] = packed["values"], packed["bits"]
                entry["packed"] = True
            entries[name] = entry
        folders.save_safetensors(tensors, partial / WEIGHTS)
        manifest = {"spec": config.to_dict(spec), "params": entries, "report": report}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial / "tokenizer"))
    return Path(out)


def is_compressed(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / MANIFEST}: unreadable ({e})") from e


def read_spec(folder: Path) -> config.Config:
    return config.from_dict(_manifest(folder)["spec"])


def read_report(folder: Path) -> dict:
    return _manifest(folder)["report"]


def load(folder: Path, abstract_params: nnx.State, shardings: nnx.State) -> nnx.State:
    """The stored parameters, unpacked, verified (shape, dtype, sha256) and placed with `shardings`."""
    entries = _manifest(folder)["params"]
    leaves = []
    try:
        with safe_open(str(folder / WEIGHTS), "numpy") as f:
            for (name, want), sharding in zip(_named(abstract_params), jax.tree.leaves(shardings)):
                entry = entries.get(name)
                if entry is None:
                    raise CheckpointError(f"{folder / MANIFEST}: no entry for parameter {name}")
                if entry.get("packed"):
                    x = unpack(f.get_tensor(f"{name}:values"), f.get_tensor(f"{name}:bits"), entry["shape"],
                               entry["dtype"])
                else:
                    x = f.get_tensor(name)
                if x.shape != tuple(want.shape) or x.dtype != want.dtype or _digest(x) != entry["sha256"]:
                    raise CheckpointError(f"{folder / WEIGHTS}: tensor {name} is damaged or does not match the "
                                          f"model ({x.dtype}{list(x.shape)}, expected {want.dtype}{list(want.shape)})")
                leaves.append(jax.device_put(x, sharding))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable ({e})") from e
    return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)


def bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST
               and "tokenizer" not in p.parts)
