"""Magnitude pruning: which kernels, exact masks (unstructured per layer or global, N:M along the contraction
dim), Zhu & Gupta's (2017) polynomial sparsity schedule, and masks kept in the train state.

Hand-written: jaxpruner (Google's JAX pruning library) is not on this package registry, and what is needed is
small. Masks come from exact ranks (a stable argsort of |w|), not a threshold: a threshold misses the target
whenever magnitudes tie, as they do at the zeros an earlier mask left. Everything here is jnp, so masks are
recomputed inside the jitted train step under any sharding; they are `nnx.Param`-shaped trees carrying their
parameters' logical axes, so they shard like their parameters and are saved with the state.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.errors import ConfigError


def pattern(cfg) -> tuple[int, int] | None:
    """'N:M' -> (N, M): keep N of every M consecutive weights along the contraction dim."""
    if not cfg.pattern:
        return None
    m = re.fullmatch(r"(\d+):(\d+)", cfg.pattern)
    if not m or not 0 < int(m[1]) < int(m[2]):
        raise ConfigError(f"prune.pattern must be N:M with 0 < N < M (e.g. 2:4), got {cfg.pattern!r}")
    return int(m[1]), int(m[2])


def target(cfg) -> float:
    """The final sparsity: prune.sparsity, or (M-N)/M for an N:M pattern."""
    nm = pattern(cfg)
    if nm is None:
        return cfg.sparsity
    implied = (nm[1] - nm[0]) / nm[1]
    if cfg.sparsity not in (0.0, implied):
        raise ConfigError(f"prune.sparsity={cfg.sparsity} contradicts prune.pattern={cfg.pattern} "
                          f"(which means sparsity {implied}); leave prune.sparsity unset")
    return implied


def validate(cfg) -> None:
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ConfigError(f"prune.sparsity must be in [0, 1), got {cfg.sparsity}")
    target(cfg)
    if cfg.scope not in ("layer", "global"):
        raise ConfigError(f"prune.scope must be 'layer' or 'global', got {cfg.scope!r}")
    if cfg.every < 1:
        raise ConfigError(f"prune.every must be >= 1, got {cfg.every}")
    if not 0 <= cfg.begin <= cfg.end:
        raise ConfigError(f"prune.begin and prune.end must satisfy 0 <= begin <= end, got {cfg.begin}, {cfg.end}")
    try:
        re.compile(cfg.exclude)
    except re.error as e:
        raise ConfigError(f"prune.exclude is not a regular expression: {e}") from e


def enabled(cfg) -> bool:
    return target(cfg) > 0


def _name(path) -> str:
    return ".".join(str(k) for k in path)


def selected(name: str, variable: nnx.Variable, cfg) -> bool:
    """A matmul kernel (a parameter with `contract` metadata: not an embedding, norm or bias) whose name does
    not match `cfg.exclude` and whose logical axes include none of `cfg.exclude_axes` (comma-separated)."""
    meta = variable.get_metadata()
    axes = {a for a in cfg.exclude_axes.split(",") if a}
    return ("contract" in meta and not (cfg.exclude and re.search(cfg.exclude, name))
            and not axes & set(meta.get("logical_axes") or ()))


def prunable(params: nnx.State, cfg) -> nnx.State:
    """The kernels `selected` picks."""
    return params.filter(lambda path, v: selected(_name(path), v, cfg))


def _contract(v) -> int:
    return v.get_metadata()["contract"]


def _ranks(scores: jax.Array) -> jax.Array:
    """Position of each element in ascending order (ties by index): exact, unlike a threshold."""
    order = jnp.argsort(scores, stable=True)
    return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32))


def _group_scores(name: str, w: jax.Array, contract: int, nm: tuple[int, int]) -> jax.Array:
    """|w|, with the N largest of each group of M along the (flattened) contraction dim set to +inf, so they
    are never among the pruned; the rest may be. Flattened like `w`."""
    n, m = nm
    k_in = 1
    for d in w.shape[:contract]:
        k_in *= d
    if k_in % m:
        raise ConfigError(f"prune.pattern={n}:{m}: {name} contracts {k_in} inputs, not a multiple of {m}; "
                          f"exclude it with prune.exclude")
    groups = jnp.abs(w).reshape(k_in // m, m, -1)
    keep = _ranks_along(groups, axis=1) >= m - n
    return jnp.where(keep, jnp.inf, groups).reshape(-1)


def _ranks_along(x: jax.Array, axis: int) -> jax.Array:
    return jnp.argsort(jnp.argsort(x, axis=axis, stable=True), axis=axis, stable=True)


def masks_at(params: nnx.State, sparsity, cfg) -> nnx.State:
    """Boolean masks (True = kept) zeroing exactly round(sparsity x size) weights of each kernel in `params`
    (scope 'layer'), or of all of them together (scope 'global'); with an N:M pattern only weights outside
    their group's N largest are candidates, so at (M-N)/M every group keeps exactly N."""
    nm = pattern(cfg)
    named = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    variables = [v for _, v in named]
    scores = [(_group_scores(jax.tree_util.keystr(p), v[...], _contract(v), nm) if nm
               else jnp.abs(v[...]).reshape(-1)) for p, v in named]
    if cfg.scope == "global" and nm is None:
        flat = jnp.concatenate(scores)
        keep = _ranks(flat) >= jnp.round(sparsity * flat.size).astype(jnp.int32)
        splits = np.cumsum([s.size for s in scores])[:-1]
        kept = jnp.split(keep, [int(i) for i in splits])
    else:
        kept = [_ranks(s) >= jnp.round(sparsity * s.size).astype(jnp.int32) for s in scores]
    masks = [k.reshape(v.shape) for k, v in zip(kept, variables)]
    return jax.tree.unflatten(jax.tree.structure(params), masks)


def sparsity_at(step, cfg):
    """Zhu & Gupta: s_t = s_f (1 - (1 - (t - begin) / (end - begin))^3) between begin and end; s_f from end on
    (so begin == end prunes in one shot)."""
    step = jnp.asarray(step, jnp.float32)
    if cfg.end == cfg.begin:
        frac = (step >= cfg.begin).astype(jnp.float32)
    else:
        frac = jnp.clip((step - cfg.begin) / (cfg.end - cfg.begin), 0.0, 1.0)
    return target(cfg) * (1.0 - (1.0 - frac) ** 3)


def is_mask_step(step, cfg):
    """Masks are recomputed every `prune.every` steps from begin to end, and at end."""
    step = jnp.asarray(step)
    return (step >= cfg.begin) & (step <= cfg.end) & (((step - cfg.begin) % cfg.every == 0) | (step == cfg.end))


def apply(params: nnx.State, masks: nnx.State | None) -> nnx.State:
    """Params with the masked weights set to +0 (masks cover a subset of params; `where`, not a product,
    so no -0.0 appears)."""
    if masks is None:
        return params
    subset = params.filter(lambda path, _: _has(masks, path))
    return nnx.merge_state(params, jax.tree.map(lambda p, m: jnp.where(m, p, 0).astype(p.dtype), subset, masks))


def _has(tree, path) -> bool:
    node = tree
    for k in path:
        if k not in node:
            return False
        node = node[k]
    return True


def init(params: nnx.State, cfg) -> tuple[nnx.State, nnx.State | None]:
    """(params with the step-0 masks applied, the masks): all ones unless a one-shot prune starts at 0; masks
    are None when pruning is off."""
    if not enabled(cfg):
        return params, None
    masks = masks_at(prunable(params, cfg), sparsity_at(0, cfg), cfg)
    return apply(params, masks), masks


def update(step, params: nnx.State, masks: nnx.State | None, cfg, active=True) -> nnx.State | None:
    """The masks after an optimizer step that reached `step`: recomputed from the current magnitudes on
    mask steps (only when `active`: the step was completed), else unchanged."""
    if masks is None:
        return None
    subset = params.filter(lambda path, _: _has(masks, path))
    return jax.lax.cond(is_mask_step(step, cfg) & active, lambda: masks_at(subset, sparsity_at(step, cfg), cfg),
                        lambda: masks)
