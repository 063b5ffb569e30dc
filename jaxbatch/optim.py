"""Optimizers (optax), learning-rate schedules, LR scaling rules and the weight-decay mask."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxbatch.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EffectiveHparams:
    """Learning rate and warmup after the scaling rule, as printed and logged at the start of a run."""

    learning_rate: float
    warmup_steps: int
    rule: str
    reference_batch: int
    batch: int


def scale_hparams(cfg, global_batch: int, total_steps: int) -> EffectiveHparams:
    """LR scaling rules for a global batch B given hparams tuned at reference batch B0.

    linear (Goyal et al. 2017): lr x B/B0.  sqrt (Krizhevsky 2014; LAMB paper for Adam/LAMB): lr x sqrt(B/B0).
    Warmup keeps the number of warmup *examples* fixed: steps x B0/B (at least 1 step when warmup was on);
    `warmup_fraction` of the run's `total_steps` is already in this run's steps, so it is taken as is.
    """
    ref = cfg.reference_batch or global_batch
    ratio = global_batch / ref
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}.get(cfg.scale_rule)
    if factor is None:
        raise ConfigError(f"optim.scale_rule must be linear, sqrt or none, got {cfg.scale_rule!r}")
    if cfg.warmup_fraction:
        warmup = max(1, round(cfg.warmup_fraction * total_steps))
    elif cfg.scale_rule == "none" or not cfg.warmup_steps:
        warmup = cfg.warmup_steps
    else:
        warmup = max(1, math.ceil(cfg.warmup_steps / ratio))
    return EffectiveHparams(cfg.learning_rate * factor, warmup, cfg.scale_rule, ref, global_batch)


def schedule(cfg, hp: EffectiveHparams, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then linear / cosine / polynomial(power 2) decay to 0, or constant."""
    decay_steps = max(1, total_steps - hp.warmup_steps)
    decay = {
        "linear": lambda: optax.linear_schedule(hp.learning_rate, 0.0, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(hp.learning_rate, decay_steps),
        "polynomial": lambda: optax.polynomial_schedule(hp.learning_rate, 0.0, 2.0, decay_steps),
        "constant": lambda: optax.constant_schedule(hp.learning_rate),
    }.get(cfg.schedule)
    if decay is None:
        raise ConfigError(f"optim.schedule must be linear, cosine, polynomial or constant, got {cfg.schedule!r}")
    if hp.warmup_steps == 0:
        return decay()
    warmup = optax.linear_schedule(0.0, hp.learning_rate, hp.warmup_steps)
    return optax.join_schedules([warmup, decay()], [hp.warmup_steps])


def flat_adamw(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    """optax.adamw with its two moments held as one flat vector each (`optax.flatten` around the Adam
    statistics; decay and learning rate stay per parameter, so the decay mask holds). The same elementwise
    update, with a state of 3 arrays (two moments, the count) instead of 2 per parameter plus the count: a
    small model's step on CPU spends its host time per array (dispatch, donation, one update kernel each;
    benchmarks/README.md, "Decoder step on CPU"). The vectors are replicated, so it is for data-parallel
    meshes (config.validate)."""
    return optax.chain(optax.flatten(optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps)),
                       optax.add_decayed_weights(cfg.weight_decay, decay_mask), optax.scale_by_learning_rate(lr))


def adafactor(lr, weight_decay: float) -> optax.GradientTransformation:
    """optax.adafactor's defaults (factored second moments, update clipping at block RMS 1, steps relative to
    each parameter's scale), with weight decay decoupled and scaled by the learning rate as in every other
    optimizer here (p -= lr_t * (u + wd * p)). optax.adafactor adds its `weight_decay_rate` after the
    learning rate, so weight_decay=0.01 there shrank every weight by 1% a step whatever the schedule."""
    return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0), optax.scale_by_param_block_rms(),
                       optax.add_decayed_weights(weight_decay, decay_mask), optax.scale_by_learning_rate(lr))


def decay_mask(params):
    """True where weight decay applies, read from each parameter's `decay` metadata (models/layers.py
    sets it False on biases and normalisation scales), so no family's naming can slip through."""

    def one(v):
        if not isinstance(v, nnx.Variable):
            return True
        return jax.tree.map(lambda _: bool(v.get_metadata().get("decay", True)), v)

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm, scaling by one factor (max_norm / norm) where optax divides each element by the
    norm. XLA counts a division expensive and does not repeat it inside both of Adam's moment updates, so optax's
    clipped gradients were written out and read back: 4-7% of a CPU step for 22M-124M parameters
    (benchmarks/README.md). The same (empty) state, so checkpoints restore either way; a clipped step's values
    differ from optax's in the last bit. `grad_norm`, when the caller has it (the train step computes it for its
    finiteness check and metrics), is the updates' global norm, so the gradients are not read a second time."""

    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.global_norm(updates) if grad_norm is None else grad_norm
        factor = max_norm / norm
        return jax.tree.map(lambda t: jnp.where(norm < max_norm, t, t * factor.astype(t.dtype)), updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def make(cfg, hp: EffectiveHparams, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `optim.name`, with global-norm clipping in front when `clip_norm > 0`."""
    lr = schedule(cfg, hp, total_steps)
    wd = cfg.weight_decay
    factories = {
        "adamw": lambda: flat_adamw(cfg, lr) if cfg.flatten else optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps,
                                                                              weight_decay=wd, mask=decay_mask),
        "lamb": lambda: optax.lamb(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=wd, mask=decay_mask),
        "lars": lambda: optax.lars(lr, weight_decay=wd, weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                                   momentum=cfg.momentum),
        "sgd": lambda: optax.chain(optax.add_decayed_weights(wd, decay_mask), optax.sgd(lr, cfg.momentum)),
        "adafactor": lambda: adafactor(lr, wd),
    }
    if cfg.flatten and cfg.name != "adamw":
        raise ConfigError(f"optim.flatten applies to adamw (its moments are elementwise), not {cfg.name!r}")
    if cfg.name not in factories:
        raise ConfigError(f"optim.name must be one of {', '.join(factories)}, got {cfg.name!r}")
    tx = factories[cfg.name]()
    if cfg.clip_norm > 0:
        tx = optax.chain(clip_by_global_norm(cfg.clip_norm), tx)
    return tx, lr


def freeze(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` (with its accumulation: the outermost layer) on what `lora.trainable` marks, no update and no state
    (no moments, no accumulated gradient) for the rest."""
    from jaxbatch import lora

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, lora.labels)
