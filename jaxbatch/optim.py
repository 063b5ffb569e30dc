"""Optimizers (optax), learning-rate schedules, LR scaling rules, the weight-decay mask and Muon's matrices."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from optax import contrib
from optax.transforms import MaskedNode

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


SCHEDULES = ("linear", "cosine", "polynomial", "constant", "wsd", "rsqrt")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def _decay(shape: str, peak: float, floor: float, steps: int) -> optax.Schedule:
    """From `peak` to `floor` over `steps` steps, then `floor`: the decays of HF's get_wsd_schedule (its
    `decay_type`), which MaxText's `wsd_decay_style` shares in part (linear, cosine)."""
    if shape == "linear":
        return optax.linear_schedule(peak, floor, steps)
    if shape == "cosine":
        return optax.cosine_decay_schedule(peak, steps, alpha=floor / peak if peak else 0.0)

    def one_minus_sqrt(count):  # Hägele et al. 2024's cooldown: 1 - sqrt(t)
        t = jnp.clip(count / steps, 0.0, 1.0)
        return floor + (peak - floor) * (1.0 - jnp.sqrt(t))

    return one_minus_sqrt


def wsd_decay_steps(cfg, total_steps: int) -> int:
    """WSD's final decay: `decay_fraction` of the run's steps (MaxText's wsd_decay_steps_fraction), at least one."""
    return max(1, round(cfg.decay_fraction * total_steps))


def schedule(cfg, hp: EffectiveHparams, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then one of:
    linear / cosine / polynomial (power 2): decay to `min_lr_ratio` x peak at the run's last step (HF's
    linear and cosine-with-min-lr schedules, MaxText's learning_rate_final_fraction);
    constant: the peak;
    wsd: warmup-stable-decay (MaxText's and Levanter's; HF's get_wsd_schedule from its warmup's end): the peak
    until the last `decay_fraction` of the run, then `decay_shape` down to `min_lr_ratio` x peak, so a run can be
    lengthened (train.steps is changeable on resume) while it is still in the stable phase;
    rsqrt: peak x sqrt(warmup / step), never below `min_lr_ratio` x peak (T5's and big_vision's, HF's
    inverse_sqrt): no end, for runs whose length is not known."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    peak, warmup = hp.learning_rate, hp.warmup_steps
    floor = peak * cfg.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)
    if cfg.schedule == "wsd":
        cool = wsd_decay_steps(cfg, total_steps)
        if warmup + cool > total_steps:
            raise ConfigError(f"optim.schedule=wsd: the warmup ({warmup} steps) and the decay ({cool} steps, "
                              f"optim.decay_fraction={cfg.decay_fraction} of train.steps) do not fit in "
                              f"train.steps={total_steps}")
        stable = total_steps - warmup - cool
        decay = optax.join_schedules([optax.constant_schedule(peak), _decay(cfg.decay_shape, peak, floor, cool)],
                                     [stable])
    elif cfg.schedule == "rsqrt":
        if not warmup:
            raise ConfigError("optim.schedule=rsqrt needs a warmup (its decay is peak x sqrt(warmup / step)): "
                              "set optim.warmup_steps or optim.warmup_fraction")

        def decay(count):  # count is the step less the warmup
            return jnp.maximum(floor, peak * jax.lax.rsqrt((count + warmup) / warmup))
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "polynomial":
        decay = optax.polynomial_schedule(peak, floor, 2.0, decay_steps)
    else:
        decay = _decay(cfg.schedule, peak, floor, decay_steps)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def describe_schedule(cfg, hp: EffectiveHparams, total_steps: int) -> str:
    """The decay in words, as a run's start prints it."""
    floor = f" to {cfg.min_lr_ratio:g} x peak" if cfg.min_lr_ratio else ""
    if cfg.schedule == "wsd":
        cool = wsd_decay_steps(cfg, total_steps)
        return (f"wsd: stable to step {total_steps - cool}, then {cfg.decay_shape} decay{floor or ' to 0'} "
                f"over {cool} steps")
    if cfg.schedule == "rsqrt":
        return f"rsqrt decay (peak x sqrt({hp.warmup_steps} / step)){floor and ', never below' + floor[3:]}"
    return f"{cfg.schedule} decay{floor}"


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


MUON_RMS = 0.2  # Moonlight's (Liu et al. 2025): Muon's update RMS made AdamW's, so AdamW's lr and decay carry over


def muon_dims(v) -> contrib.MuonDimensionNumbers | None:
    """How Muon reads a parameter as a matrix, from its metadata, so no family is named: a dense layer's kernel is
    its `contract` input dims against the rest, one matrix with the heads in it (as torch.optim.Muon reads a
    Linear's weight). A task head, a kernel with a vocabulary axis (an untied LM head), embeddings, norms and
    biases are None: AdamW's, as in Keller Jordan's and Moonlight's recipes."""
    meta = _metadata(v)
    n_in = meta.get("contract")
    if n_in is None or meta.get("head") or "vocab" in meta.get("logical_axes", ()):
        return None
    return contrib.MuonDimensionNumbers(tuple(range(n_in)), tuple(range(n_in, len(v.shape))))


def _metadata(v) -> dict:
    return v.get_metadata() if isinstance(v, nnx.Variable) else {}


def _per_parameter(fn, tree):
    """`fn(variable)` in place of each parameter's value; optax's masked-out parameters stay masked."""

    def one(v):
        if isinstance(v, MaskedNode):
            return v
        return jax.tree.map(lambda _: fn(v), v) if isinstance(v, nnx.Variable) else fn(v)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, (nnx.Variable, MaskedNode)))


def scale_by_matrix_shape(rms: float = MUON_RMS) -> optax.GradientTransformation:
    """An orthogonalized update times rms x sqrt(max(fan_in, fan_out)) (torch.optim.Muon's
    adjust_lr_fn="match_rms_adamw"): the RMS of AdamW's updates whatever the matrix's shape."""

    def update(updates, state, params=None):
        del params

        def one(v):
            if not jax.tree.leaves(v):  # masked: AdamW's (optax.partition leaves the wrapper around a MaskedNode)
                return v
            dims = muon_dims(v)
            n_in = len(dims.reduction_axis)
            fan_in, fan_out = math.prod(v.shape[:n_in]), math.prod(v.shape[n_in:])
            return jax.tree.map(lambda u: u * (rms * math.sqrt(max(fan_in, fan_out))), v)

        return jax.tree.map(one, updates, is_leaf=lambda x: isinstance(x, (nnx.Variable, MaskedNode))), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def muon(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    """Muon (optax.contrib.scale_by_muon: Nesterov momentum `muon_momentum`, orthogonalized by 5 Newton-Schulz
    steps) on the matrices `muon_dims` picks, scaled to AdamW's update RMS, with decoupled weight decay; AdamW
    (b1, b2, eps, the decay mask) on the rest. One learning rate and one weight decay for both, as Moonlight's
    recipe: optax.contrib.muon would also put Nesterov momentum into the AdamW half. optax bias-corrects the
    Nesterov average (MaxText's Muon) where torch.optim.Muon does not: the two differ in the first tens of
    steps only (tests/test_optim.py)."""
    matrices = optax.chain(
        contrib.scale_by_muon(beta=cfg.muon_momentum, nesterov=True,
                              weight_dimension_numbers=lambda p: _per_parameter(muon_dims, p)),
        scale_by_matrix_shape(), optax.add_decayed_weights(cfg.weight_decay), optax.scale_by_learning_rate(lr))
    rest = optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.partition({"muon": matrices, "adamw": rest},
                           lambda p: _per_parameter(lambda v: "muon" if muon_dims(v) else "adamw", p))


def decay_mask(params):
    """True where weight decay applies, read from each parameter's `decay` metadata (models/layers.py
    sets it False on biases and normalisation scales), so no family's naming can slip through."""

    return _per_parameter(lambda v: bool(_metadata(v).get("decay", True)), params)


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
        "muon": lambda: muon(cfg, lr),
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
