"""LoRA fine-tuning (Hu et al. 2021, as Hugging Face PEFT does it): the dense layers named by
`model.lora_targets` learn a low-rank update x . A . B * alpha / rank beside their frozen kernel, and only
those factors and the task head train, so the optimizer keeps moments for a small fraction of the model.

Family-agnostic like compression: it swaps `layers.Dense` modules for `LoraDense` by their name (the last
part of the module path: query, key, value, out, wi, wo, gate), and reads which parameters train from
metadata (`lora` on the factors; `head` on a task head's layers, which PEFT's `modules_to_save` trains
too). B starts at zero, so the model starts as the pretrained one; `merged` folds
the update into the kernels for export (a plain model of the family's own shape).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.errors import ConfigError
from jaxbatch.models import layers
from jaxbatch.models.layers import Dense, param

TARGETS = ("query", "key", "value", "out", "wi", "wo", "gate")  # the dense layers' names in every family


class LoraDense(Dense):
    """A `Dense` (its kernel and bias under the same names, so pretrained weights load as before) plus
    factors A (inputs x rank; uniform in +-1/sqrt(fan_in), PEFT's kaiming init) and B (rank x outputs; zero);
    in training the factors' input is dropped out at `drop_rate` (PEFT's lora_dropout; the kernel sees all of
    x)."""

    def __init__(self, dense: Dense, rank: int, scale: float, rngs: nnx.Rngs, drop_rate: float = 0.0):
        self.n_in, self.dtype, self.kernel, self.bias = dense.n_in, dense.dtype, dense.kernel, dense.bias
        meta = self.kernel.get_metadata()
        names, shape = meta["logical_axes"], self.kernel[...].shape
        fan_in = math.prod(shape[: self.n_in])
        bound = 1.0 / math.sqrt(fan_in)
        self.lora_a = param(rngs, lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                            (*shape[: self.n_in], rank), (*names[: self.n_in], None), lora=True)
        self.lora_b = param(rngs, jax.nn.initializers.zeros, (rank, *shape[self.n_in:]), (None, *names[self.n_in:]),
                            lora=True)  # no `contract`: not a kernel compression would select
        self.scale, self.drop_rate = scale, drop_rate

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = super().__call__(x)
        if not deterministic and self.drop_rate:
            x = layers.dropout(x, rngs.dropout(), self.drop_rate)
        low = self.contract(x, self.lora_a[...])
        update = jnp.tensordot(low, self.lora_b[...].astype(self.dtype), axes=1)
        return y + jnp.asarray(self.scale, self.dtype) * update


def targets(model_cfg) -> tuple[str, ...]:
    """The dense layers model.lora_targets names; `all-linear` (PEFT's shortcut) is every one of them."""
    if model_cfg.lora_targets.strip() == "all-linear":
        return TARGETS
    names = tuple(n.strip() for n in model_cfg.lora_targets.split(",") if n.strip())
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise ConfigError(f"model.lora_targets names dense layers among {', '.join(TARGETS)}, got "
                          f"{model_cfg.lora_targets!r}")
    return names


def validate(model_cfg, prune_cfg) -> None:
    if model_cfg.lora_rank < 0:
        raise ConfigError(f"model.lora_rank must be >= 0 (0 = no LoRA), got {model_cfg.lora_rank}")
    if not model_cfg.lora_rank:
        return
    targets(model_cfg)
    if model_cfg.quant or model_cfg.lowrank or prune_cfg.sparsity:
        raise ConfigError("model.lora_rank trains low-rank updates of float dense layers; a quantized, factorised "
                          "or pruned model is not one (export the LoRA run, then compress the folder)")


def attach(model: nnx.Module, model_cfg, seed: int = 0) -> nnx.Module:
    """The model with its targeted dense layers as `LoraDense` (none when model.lora_rank is 0)."""
    if not model_cfg.lora_rank:
        return model
    from jaxbatch import compress

    names, rngs = targets(model_cfg), nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 0x10A))
    found = [(path, m) for path, m in compress.modules(model, Dense) if path.rsplit(".", 1)[-1] in names]
    if not found:
        raise ConfigError(f"model.lora_targets={model_cfg.lora_targets!r} matches no dense layer of this model")
    for path, m in found:
        compress.replace(model, path, LoraDense(m, model_cfg.lora_rank, scale(model_cfg), rngs, model_cfg.lora_dropout))
    return model


def scale(model_cfg) -> float:
    """alpha / rank (model.lora_alpha; 0 = the rank, a scale of 1), or alpha / sqrt(rank) with model.lora_rslora
    (Kalajdzievski 2023: the update's size then stays put as the rank grows)."""
    return (model_cfg.lora_alpha or model_cfg.lora_rank) / divisor(model_cfg.lora_rank, model_cfg.lora_rslora)


def divisor(rank: int, rslora: bool) -> float:
    """What alpha is divided by for the scale: the rank, or its square root (rsLoRA)."""
    return math.sqrt(rank) if rslora else rank


def trainable(params):
    """True where a parameter trains under LoRA: the factors and a task head's layers (`head` metadata: the
    sequence head's dense layer and the classifier, which a fine-tune from a base checkpoint starts fresh)."""
    def one(v):
        meta = v.get_metadata() if isinstance(v, nnx.Variable) else {}
        keep = bool(meta.get("lora") or meta.get("head"))
        return jax.tree.map(lambda _: keep, v) if isinstance(v, nnx.Variable) else keep

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def labels(params):
    """optax.multi_transform's labels: 'train' or 'frozen' per parameter."""
    return jax.tree.map(lambda t: "train" if t else "frozen", trainable(params))


def only_trainable(grads, params):
    """The gradient with the frozen parameters' entries zero: XLA then drops their weight-gradient matmuls,
    and the gradient norm, clipping and noise scale see only what trains."""
    return jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable(params))


def merged(params: dict, model_cfg) -> dict:
    """Plain {path: array} parameters with each kernel + scale * A . B and no factors (what export writes)."""
    if not model_cfg.lora_rank:
        return params
    out = {k: v for k, v in params.items() if not k.endswith((".lora_a", ".lora_b"))}
    for name in params:
        if name.endswith(".lora_a"):
            stem = name[: -len(".lora_a")]
            a, b = (np.asarray(params[f"{stem}.{f}"], np.float32) for f in ("lora_a", "lora_b"))
            out[f"{stem}.kernel"] = np.asarray(params[f"{stem}.kernel"], np.float32) + scale(model_cfg) * np.tensordot(
                a, b, axes=1)
    return out
