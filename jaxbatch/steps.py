"""Pure `train_step` and `eval_step`: (state, batch) -> (state, metrics), compiled once with explicit
in/out shardings. Nothing here reads globals or hidden RNG: dropout keys come from `state.rng` and
`state.step`, so a step is a function of its inputs alone (and a resumed run replays exactly)."""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbatch import accumulate, lora, losses, rampup
from jaxbatch import mesh as mesh_lib
from jaxbatch.compress import prune
from jaxbatch.models import Family
from jaxbatch.state import TrainState


def forward(family: Family, graphdef: nnx.GraphDef, params: nnx.State, batch: dict, *, rng: jax.Array | None):
    """The family's outputs; dropout is on exactly when a key is given."""
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    return family.forward(model, batch, deterministic=rng is None, rngs=rngs)


def make_grad_fn(family: Family, model_cfg, graphdef: nnx.GraphDef):
    """grad_fn(params, batch, rng, normalizer) -> (metric sums, d(loss_sum * normalizer)/d params)."""

    def grad_fn(params, batch, rng, normalizer):
        def objective(p):
            sums, _ = family.loss_sums(forward(family, graphdef, p, batch, rng=rng), batch, model_cfg)
            return sums["loss_sum"] * normalizer, sums

        grads, sums = jax.grad(objective, has_aux=True)(params)
        return sums, (lora.only_trainable(grads, params) if model_cfg.lora_rank else grads)

    return grad_fn


def _apply_gradients(state: TrainState, grads, loss_sum, tx: optax.GradientTransformation, prune_cfg,
                     step_done: Any = True, whole: bool = True):
    """Unscales and updates; when the loss or any gradient is not finite the update is skipped (params and
    optimizer state kept) and counted in `bad_steps`. fp16 keeps its own rule: such a step halves the loss
    scale and counts only once the scale has fallen to 1. Pruning masks are recomputed on their schedule
    and applied after every update, so pruned weights stay exactly zero. Returns (state, the gradients' global
    norm, finite).

    The gradients' global norm is read once, for three uses: a NaN or inf anywhere makes it non-finite (where
    a separate isfinite pass cost a memory-bound CPU step ~2%; a norm past float32's range, 1.8e19, counts as
    not finite too: no update would survive it), the metrics report it, and clipping scales by it. `whole`:
    these gradients are what `tx` steps with (not one micro-batch's share, as under optax.MultiSteps), so its
    clipping may take the norm instead of reading the gradients again inside the update."""
    grads = state.loss_scale.unscale(grads)
    norm = optax.global_norm(grads)
    finite = jnp.isfinite(norm) & jnp.isfinite(loss_sum)
    extra = {"grad_norm": norm} if whole else {}

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state

    # A branch, not a select of new vs old: XLA updates the donated buffers in place either way, where a
    # select kept the old values alive (a copy of every optimizer array, ~10% of a small model's CPU step).
    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
    counted = jnp.logical_not(finite) & (jnp.logical_not(state.loss_scale.dynamic) | (state.loss_scale.scale <= 1))
    step = state.step + jnp.asarray(step_done, jnp.int32)
    masks = prune.update(step, params, state.masks, prune_cfg, active=jnp.asarray(step_done) & finite)
    new = state.replace(step=step, params=prune.apply(params, masks), opt_state=opt_state, masks=masks,
                        loss_scale=state.loss_scale.adjust(finite),
                        bad_steps=jnp.where(finite, 0, state.bad_steps + counted.astype(jnp.int32)))
    return new, norm, finite


def loss_denominator(labels: jax.Array, labelled_per_row: float) -> jax.Array:
    """What divides a global batch's summed loss. 0 `labelled_per_row` (train.loss_norm=batch): the batch's own
    labelled positions, as Hugging Face's mean loss. Otherwise (dataset): rows x the train split's mean
    labelled positions per row, the same for every batch of that size, so each position weighs the same in
    every batch. Length buckets put short rows together; dividing such a batch by its own few positions
    made each of its tokens count several times more than a long batch's (9x on CoNLL-2003; see
    benchmarks/README.md, finetune_e2e.py)."""
    if labelled_per_row:
        return jnp.float32(labelled_per_row * labels.shape[0])
    return jnp.maximum(jnp.sum(losses.labelled(labels)).astype(jnp.float32), 1.0)


def _metrics(sums: dict, grad_norm, finite, state: TrainState, schedule: optax.Schedule,
             denominator: jax.Array | None = None) -> dict:
    """Means of the family's metric sums (`correct` -> accuracy, any other sum -> its mean per weight).
    `denominator`: what the step divided the loss sum by (loss_denominator), for the noise-scale estimate,
    which needs the norm of the batch's own mean gradient."""
    weight = jnp.maximum(sums["weight"], 1.0)
    out = {("accuracy" if k == "correct" else k): v / weight for k, v in sums.items()
           if k not in ("loss_sum", "weight", "micro_grad_sq")}
    out.update(loss=sums["loss_sum"] / weight, weight=sums["weight"], grad_norm=grad_norm,
               learning_rate=schedule(state.step), loss_scale=state.loss_scale.scale, grads_finite=finite)
    if "micro_grad_sq" in sums:  # the two batch sizes of the gradient-noise-scale estimate
        out.update(grad_sq_small=sums["micro_grad_sq"], grad_sq_big=(grad_norm * denominator / weight) ** 2)
    return out


def train_step(state: TrainState, batch: dict, *, grad_fn, tx, schedule, micro_batch: int, labelled_per_row: float,
               prune_cfg, mesh: Mesh, rules) -> tuple[TrainState, dict]:
    """One optimizer step on one global batch, accumulated in a scan over micro-batches of at most
    `micro_batch` sequences (the batch is train.batch_size, or smaller while the batch ramps up)."""
    with mesh_lib.activation_rules(mesh, rules):
        rng = jax.random.fold_in(state.rng, state.step)
        denominator = loss_denominator(batch["labels"], labelled_per_row)
        k = rampup.accum_for(batch["labels"].shape[0], micro_batch)
        sums, grads = accumulate.scan_gradients(grad_fn, state.params, batch, k, rng,
                                                state.loss_scale.scale / denominator)
        new_state, grad_norm, finite = _apply_gradients(state, grads, sums["loss_sum"], tx, prune_cfg)
        return new_state, _metrics(sums, grad_norm, finite, state, schedule, denominator)


def multisteps_micro_step(state: TrainState, batch: dict, index: jax.Array, *, grad_fn, tx, schedule,
                          accum_steps: int, labelled_per_row: float, prune_cfg, mesh: Mesh,
                          rules) -> tuple[TrainState, dict]:
    """One micro-batch of a global batch through an `optax.MultiSteps` optimizer: `index` picks the
    micro-batch; the inner update happens on index k-1. The gradient is scaled by k / (the global batch's
    loss_denominator) so that MultiSteps' mean over k calls is the exact global gradient."""
    with mesh_lib.activation_rules(mesh, rules):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), index)
        micro = jax.tree.map(lambda x: x[index], accumulate.split_micro_batches(batch, accum_steps))
        normalizer = state.loss_scale.scale * accum_steps / loss_denominator(batch["labels"], labelled_per_row)
        sums, grads = grad_fn(state.params, micro, rng, normalizer)
        new_state, grad_norm, finite = _apply_gradients(state, grads, sums["loss_sum"], tx, prune_cfg,
                                                        step_done=index == accum_steps - 1, whole=False)
        return new_state, _metrics(sums, grad_norm, finite, state, schedule)


def eval_step(params: nnx.State, batch: dict, *, family: Family, model_cfg, graphdef, mesh: Mesh,
              rules) -> tuple[dict, dict]:
    """Metric sums and the family's per-example predictions (labels, probabilities) on one global batch."""
    with mesh_lib.activation_rules(mesh, rules):
        return family.loss_sums(forward(family, graphdef, params, batch, rng=None), batch, model_cfg)


def batch_shardings(mesh: Mesh, rules, example_batch: dict) -> dict:
    return {k: mesh_lib.batch_sharding(mesh, rules, len(v.shape)) for k, v in example_batch.items()}


class Steps:
    """The compiled steps of one run. `train(state, batch)` hides whether accumulation is a scan inside
    one jit call or k calls through optax.MultiSteps; both take the global batch. `eval(params, batch)`
    returns replicated metric sums and batch-sharded predictions. Without `tx` only `eval` exists
    (inference: predict, evaluate). `labelled_per_row`: see loss_denominator (0: each batch's own count)."""

    def __init__(self, cfg, mesh: Mesh, family: Family, graphdef, params_sh, batch_sh: dict, tx=None, schedule=None,
                 state_sh: TrainState | None = None, labelled_per_row: float = 0.0):
        rules = cfg.mesh.rules
        repl = NamedSharding(mesh, P())
        self._state, self._params = _Leaves(), _Leaves()  # the steps take (and train returns) flat leaves
        # XLA:CPU with several devices: one program at a time (see `_launch`); elsewhere programs queue up
        self._one_at_a_time = mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
        self._in_flight = None
        self.accum_steps, self.impl, self.labelled_per_row = cfg.train.accum_steps, cfg.train.accum_impl, labelled_per_row
        self.mesh, self.batch_sh = mesh, batch_sh
        if tx is not None:
            train_kw = dict(grad_fn=make_grad_fn(family, cfg.model, graphdef), tx=tx, schedule=schedule,
                            labelled_per_row=labelled_per_row, prune_cfg=cfg.prune, mesh=mesh, rules=rules)
            leaves_sh = jax.tree.leaves(state_sh)
            if self.impl == "multisteps":
                micro = functools.partial(multisteps_micro_step, accum_steps=cfg.train.accum_steps, **train_kw)
                self._micro = jax.jit(self._state.on_leaves(micro, returns_tree=True),
                                      in_shardings=(leaves_sh, batch_sh, repl), out_shardings=(leaves_sh, repl),
                                      donate_argnums=0)
            else:
                step = functools.partial(train_step, micro_batch=rampup.micro_batch(cfg.train), **train_kw)
                self._train = jax.jit(self._state.on_leaves(step, returns_tree=True),
                                      in_shardings=(leaves_sh, batch_sh), out_shardings=(leaves_sh, repl),
                                      donate_argnums=0)
        evaluate = functools.partial(eval_step, family=family, model_cfg=cfg.model, graphdef=graphdef, mesh=mesh,
                                     rules=rules)
        self._eval_fn, self._params_sh, self._eval = evaluate, params_sh, None
        self._ahead: dict[tuple, concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def compile_ahead(self, abstract_state: TrainState, abstract_batches: list[dict]) -> None:
        """Starts compiling the train step for batches of these shapes, one after another on a thread, while
        the caller goes on (initialising the state compiles a program too, and on 2 CPU cores the compiles
        overlap: ~5 s of the first start-up of a small decoder, more with several bucket lengths); `train`
        then runs those executables, waiting for one still compiling."""
        if self.impl == "multisteps" or not abstract_batches:
            return
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile-ahead")
        for batch in abstract_batches:
            self._ahead[_signature(batch)] = self._pool.submit(
                lambda batch=batch: self._train.lower(self._state.flatten(abstract_state), batch).compile())

    def close(self) -> None:
        """Drops compiles not yet started (a stopped run exits without compiling shapes it will not use)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def eval(self, params, batch: dict) -> tuple[dict, dict]:
        return self._launch(self._eval_program(params, batch), self._params.flatten(params), batch)

    def compile_eval(self, params, abstract_batches: list[dict]) -> None:
        """Compiles the eval step for batches of these shapes now (the train loop calls it while the train
        step compiles on its thread: a core that would otherwise wait), so evaluation does not compile."""
        for batch in abstract_batches:
            self._eval_program(params, batch).lower(self._params.flatten(params), batch).compile()

    def _eval_program(self, params, batch: dict):
        if self._eval is None:  # predictions are split along the batch like the batch; their keys are the family's
            _, preds = jax.eval_shape(self._eval_fn, params, batch)
            along_batch = NamedSharding(self.mesh, P(self.batch_sh["labels"].spec[0]))
            self._eval = jax.jit(self._params.on_leaves(self._eval_fn, returns_tree=False),
                                 in_shardings=(jax.tree.leaves(self._params_sh), self.batch_sh),
                                 out_shardings=(NamedSharding(self.mesh, P()), {k: along_batch for k in preds}))
        return self._eval

    def train(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        leaves = self._state.flatten(state)
        if self.impl != "multisteps":
            ahead = self._ahead.get(_signature(batch))
            leaves, metrics = self._launch(ahead.result() if ahead is not None else self._train, leaves, batch)
            return self._state.unflatten(leaves), metrics
        total = None
        for i in range(self.accum_steps):
            leaves, metrics = self._launch(self._micro, leaves, batch, jnp.asarray(i, jnp.int32))
            total = metrics if total is None else _combine_micro(total, metrics)
        return self._state.unflatten(leaves), total

    def _launch(self, program, *args):
        """Runs a compiled step. On XLA:CPU with several devices the previous program must first finish on
        every device: two in flight (e.g. eval batches, which queue up without waiting) can each hold a
        thread of the shared pool in an all-reduce the other device's thread has not reached, and then both
        wait forever (seen once at the final evaluation after 2000 steps; XLA's rendezvous timeout aborted
        the process). A train step waits for its predecessor's outputs anyway, so this costs no time there."""
        if self._one_at_a_time:  # (outputs donated since to a later step are finished already)
            jax.block_until_ready([x for x in jax.tree.leaves(self._in_flight) if not x.is_deleted()])
        out = program(*args)
        if self._one_at_a_time:
            self._in_flight = out
        return out

    def lower_train(self, state, batch):
        if self.impl == "multisteps":
            return self._micro.lower(self._state.flatten(state), batch, jnp.asarray(0, jnp.int32))
        return self._train.lower(self._state.flatten(state), batch)


class _Leaves:
    """A step's tree argument (the TrainState, eval's params) passed as its flat list of leaves. jit's C++
    dispatch handles a list of arrays by itself, where a tree of nnx Variables calls back into Python for
    each of its ~200 nodes, on the way in and out. That host time is added to every step on multi-device
    CPU, where the call waits for the previous step (benchmarks/README.md, "Decoder step on CPU"). The
    structure is fixed by the first tree given."""

    def __init__(self):
        self.treedef = None

    def flatten(self, tree) -> list:
        leaves, treedef = jax.tree.flatten(tree)
        if self.treedef is None:
            self.treedef = treedef
        elif treedef != self.treedef:
            raise ValueError("a state or params tree of another structure than the one this run's steps were built for")
        return leaves

    def unflatten(self, leaves: list):
        return jax.tree.unflatten(self.treedef, leaves)

    def on_leaves(self, fn, *, returns_tree: bool):
        """fn(tree, ...) as a function of the tree's leaves; with `returns_tree`, fn returns (tree, rest) and
        the tree goes back out as leaves too."""

        def leaves_fn(leaves, *args):
            out = fn(self.unflatten(leaves), *args)
            return (jax.tree.leaves(out[0]), out[1]) if returns_tree else out

        # named after the step (jit_train_step in profiles, HLO dumps and the compilation cache)
        leaves_fn.__name__ = leaves_fn.__qualname__ = getattr(fn, "func", fn).__name__
        return leaves_fn


def _signature(batch: dict) -> tuple:
    return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))


def _combine_micro(a: dict, b: dict) -> dict:
    """Per-micro-batch metrics of the MultiSteps path -> global-batch metrics (token-weighted): every mean
    per labelled position the head reports (a regression head has no accuracy)."""
    w = a["weight"] + b["weight"]
    out = dict(b)
    for key in ("loss", "accuracy", *losses.OBJECTIVE_TERMS):
        if key in b:
            out[key] = (a[key] * a["weight"] + b[key] * b["weight"]) / jnp.maximum(w, 1.0)
    out["weight"] = w
    return out
