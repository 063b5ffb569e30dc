"""Pure `train_step` and `eval_step`: (state, batch) -> (state, metrics), compiled once with explicit
in/out shardings. Nothing here reads globals or hidden RNG: dropout keys come from `state.rng` and
`state.step`, so a step is a function of its inputs alone (and a resumed run replays exactly)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbatch import accumulate
from jaxbatch import mesh as mesh_lib
from jaxbatch import precision
from jaxbatch.data.tokenize import IGNORE_INDEX  # label of positions that carry no loss, as in HF
from jaxbatch.state import TrainState


def loss_sums(logits: jax.Array, labels: jax.Array, num_labels: int) -> tuple[dict, jax.Array]:
    """Summed float32 loss over labelled positions, their count and correct predictions.

    Softmax cross-entropy for num_labels > 1; sigmoid + binary cross-entropy for num_labels == 1.
    Sums (not means) so that micro-batches, shards and eval batches combine exactly."""
    weights = labels != IGNORE_INDEX
    logits = logits.astype(jnp.float32)
    if num_labels == 1:
        logit = logits[..., 0]
        losses = optax.sigmoid_binary_cross_entropy(logit, jnp.where(weights, labels, 0).astype(jnp.float32))
        preds = (logit > 0).astype(jnp.int32)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(weights, labels, 0))
        preds = jnp.argmax(logits, -1).astype(jnp.int32)
    w = weights.astype(jnp.float32)
    sums = dict(loss_sum=jnp.sum(losses * w), weight=jnp.sum(w), correct=jnp.sum((preds == labels) * w))
    return sums, preds


def forward(graphdef: nnx.GraphDef, params: nnx.State, batch: dict, *, rng: jax.Array | None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                 deterministic=rng is None, rngs=rngs)


def make_grad_fn(graphdef: nnx.GraphDef, num_labels: int):
    """grad_fn(params, batch, rng, normalizer) -> (metric sums, d(loss_sum * normalizer)/d params)."""

    def grad_fn(params, batch, rng, normalizer):
        def objective(p):
            sums, _ = loss_sums(forward(graphdef, p, batch, rng=rng), batch["labels"], num_labels)
            return sums["loss_sum"] * normalizer, sums

        grads, sums = jax.grad(objective, has_aux=True)(params)
        return sums, grads

    return grad_fn


def _apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, step_done: Any = True):
    """Unscales, updates, and (fp16) skips the update when any gradient is not finite."""
    grads = state.loss_scale.unscale(grads)
    finite = precision.all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if state.loss_scale.dynamic:
        params, opt_state = precision.select_tree(finite, (params, opt_state), (state.params, state.opt_state))
    new = state.replace(step=state.step + jnp.asarray(step_done, jnp.int32), params=params, opt_state=opt_state,
                        loss_scale=state.loss_scale.adjust(finite))
    return new, grads, finite


def _metrics(sums: dict, grads, finite, state: TrainState, schedule: optax.Schedule) -> dict:
    weight = jnp.maximum(sums["weight"], 1.0)
    grad_norm = optax.global_norm(grads)
    out = dict(loss=sums["loss_sum"] / weight, accuracy=sums["correct"] / weight, weight=sums["weight"],
               grad_norm=grad_norm, learning_rate=schedule(state.step), loss_scale=state.loss_scale.scale,
               grads_finite=finite)
    if "micro_grad_sq" in sums:  # the two batch sizes of the gradient-noise-scale estimate
        out.update(grad_sq_small=sums["micro_grad_sq"], grad_sq_big=grad_norm**2)
    return out


def train_step(state: TrainState, batch: dict, *, graphdef, tx, schedule, num_labels: int, accum_steps: int,
               mesh: Mesh, rules) -> tuple[TrainState, dict]:
    """One optimizer step on one global batch (accumulating `accum_steps` micro-batches in a scan)."""
    with mesh_lib.activation_rules(mesh, rules):
        rng = jax.random.fold_in(state.rng, state.step)
        total = jnp.sum(batch["labels"] != IGNORE_INDEX).astype(jnp.float32)
        normalizer = state.loss_scale.scale / jnp.maximum(total, 1.0)
        sums, grads = accumulate.scan_gradients(make_grad_fn(graphdef, num_labels), state.params, batch,
                                                accum_steps, rng, normalizer)
        new_state, grads, finite = _apply_gradients(state, grads, tx)
        return new_state, _metrics(sums, grads, finite, state, schedule)


def multisteps_micro_step(state: TrainState, batch: dict, index: jax.Array, *, graphdef, tx, schedule,
                          num_labels: int, accum_steps: int, mesh: Mesh, rules) -> tuple[TrainState, dict]:
    """One micro-batch of a global batch through an `optax.MultiSteps` optimizer: `index` picks the
    micro-batch; the inner update happens on index k-1. The gradient is scaled by k / (global token count)
    so that MultiSteps' mean over k calls is the exact token-weighted global gradient."""
    with mesh_lib.activation_rules(mesh, rules):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), index)
        total = jnp.sum(batch["labels"] != IGNORE_INDEX).astype(jnp.float32)
        micro = jax.tree.map(lambda x: x[index], accumulate.split_micro_batches(batch, accum_steps))
        normalizer = state.loss_scale.scale * accum_steps / jnp.maximum(total, 1.0)
        sums, grads = make_grad_fn(graphdef, num_labels)(state.params, micro, rng, normalizer)
        new_state, grads, finite = _apply_gradients(state, grads, tx, step_done=index == accum_steps - 1)
        return new_state, _metrics(sums, grads, finite, state, schedule)


def eval_step(params: nnx.State, batch: dict, *, graphdef, num_labels: int, mesh: Mesh, rules) -> tuple[dict, Any]:
    """Metric sums and per-position predictions (for seqeval and accuracy) on one global batch."""
    with mesh_lib.activation_rules(mesh, rules):
        sums, preds = loss_sums(forward(graphdef, params, batch, rng=None), batch["labels"], num_labels)
        return sums, preds


def batch_shardings(mesh: Mesh, rules, example_batch: dict) -> dict:
    return {k: mesh_lib.batch_sharding(mesh, rules, v.ndim) for k, v in example_batch.items()}


class Steps:
    """The compiled steps of one run. `train(state, batch)` hides whether accumulation is a scan inside
    one jit call or k calls through optax.MultiSteps; both take the global batch."""

    def __init__(self, cfg, mesh: Mesh, graphdef, tx, schedule, state_sh: TrainState, batch_sh: dict):
        rules = cfg.mesh.rules
        common = dict(graphdef=graphdef, num_labels=cfg.model.num_labels, mesh=mesh, rules=rules)
        train_kw = dict(common, tx=tx, schedule=schedule, accum_steps=cfg.train.accum_steps)
        repl = NamedSharding(mesh, P())
        self.accum_steps, self.impl = cfg.train.accum_steps, cfg.train.accum_impl
        if self.impl == "multisteps":
            self._micro = jax.jit(functools.partial(multisteps_micro_step, **train_kw),
                                  in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                                  donate_argnums=0)
        else:
            self._train = jax.jit(functools.partial(train_step, **train_kw), in_shardings=(state_sh, batch_sh),
                                  out_shardings=(state_sh, repl), donate_argnums=0)
        self.eval = jax.jit(functools.partial(eval_step, **common), in_shardings=(state_sh.params, batch_sh),
                            out_shardings=(repl, batch_sh["labels"]))

    def train(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if self.impl != "multisteps":
            return self._train(state, batch)
        total = None
        for i in range(self.accum_steps):
            state, metrics = self._micro(state, batch, jnp.asarray(i, jnp.int32))
            total = metrics if total is None else _combine_micro(total, metrics)
        return state, total

    def lower_train(self, state, batch):
        if self.impl == "multisteps":
            return self._micro.lower(state, batch, jnp.asarray(0, jnp.int32))
        return self._train.lower(state, batch)


def _combine_micro(a: dict, b: dict) -> dict:
    """Per-micro-batch metrics of the MultiSteps path -> global-batch metrics (token-weighted)."""
    w = a["weight"] + b["weight"]
    out = dict(b)
    for key in ("loss", "accuracy"):
        out[key] = (a[key] * a["weight"] + b[key] * b["weight"]) / jnp.maximum(w, 1.0)
    out["weight"] = w
    return out
