"""TrainState: everything a step reads and writes, as one explicit pytree, created already sharded."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxbatch import mesh as mesh_lib
from jaxbatch import compress, host, lora, models, precision
from jaxbatch.compress import prune


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken
    params: nnx.State  # float32 master parameters, leaves carry `logical_axes`
    opt_state: Any
    rng: jax.Array  # raw uint32 key; each step folds in `step`, so resuming replays the same dropout
    loss_scale: precision.LossScale
    bad_steps: jax.Array  # consecutive steps skipped for a non-finite loss or gradient (the divergence guard)
    masks: nnx.State | None = None  # pruning masks (True = kept) of the pruned kernels, sharded like them


def build_model(model_cfg, policy: str, seed: int = 0) -> nnx.Module:
    """The family's module with parameters drawn from `seed`, computing in the policy's dtype, with the
    compressed modules a compressed model's spec names and the LoRA layers it trains."""
    model = models.family(model_cfg).build(model_cfg, rngs=nnx.Rngs(params=seed),
                                           dtype=precision.compute_dtype(policy))
    return lora.attach(compress.restructure(model, model_cfg), model_cfg, seed)


def abstract_model(model_cfg, policy: str) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and parameter shapes/metadata, without allocating anything."""
    return nnx.split(nnx.eval_shape(lambda: build_model(model_cfg, policy)))


def init_fn(cfg, tx: optax.GradientTransformation):
    def init() -> TrainState:
        _, params = nnx.split(build_model(cfg.model, cfg.precision.policy, cfg.train.seed))
        params, masks = prune.init(params, cfg.prune)
        scale = precision.LossScale.create(cfg.precision.policy, init_scale=cfg.precision.init_loss_scale,
                                           growth_interval=cfg.precision.growth_interval)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.PRNGKey(cfg.train.seed), loss_scale=scale, bad_steps=jnp.zeros((), jnp.int32),
                          masks=masks)

    return init


def shardings(abstract_state: TrainState, mesh: Mesh, rules) -> TrainState:
    """Params and optimizer moments follow their parameters' logical axes; counters are replicated."""
    return mesh_lib.tree_shardings(abstract_state, mesh, rules)


def abstract_state(cfg, tx: optax.GradientTransformation) -> TrainState:
    """The TrainState's shapes, dtypes and metadata, nothing allocated."""
    return jax.eval_shape(init_fn(cfg, tx))


def create(cfg, tx: optax.GradientTransformation, state_sh: TrainState, load_params=None) -> TrainState:
    """Initialises the state under jit with out_shardings, so each device only ever holds its shards.

    `load_params(params, shardings) -> params` (e.g. from a Hugging Face checkpoint) replaces parameters
    after the random init; the pruning masks and the optimizer state are then recomputed from the loaded
    parameters."""
    platform = jax.tree.leaves(state_sh)[0].mesh.devices.flat[0].platform
    state = jax.jit(init_fn(cfg, tx), out_shardings=state_sh, compiler_options=host.run_once_options(platform))()
    if load_params is not None:
        params = load_params(state.params, state_sh.params)

        def reinit(p, s):
            p, masks = prune.init(p, cfg.prune)
            return s.replace(params=p, opt_state=tx.init(p), masks=masks)

        state = jax.jit(reinit, out_shardings=state_sh, donate_argnums=1)(params, state)
    return state


def param_name(path) -> str:
    """Pytree path of a parameter -> 'encoder.layers.0.attention.query.kernel' (the Variable's `.value`
    attribute step dropped)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path
                    if not isinstance(k, jax.tree_util.GetAttrKey))


def num_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
