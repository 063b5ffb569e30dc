"""Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Sigma) / |G|^2, where G is the true gradient and Sigma the per-example gradient covariance.
From the squared norms of mean gradients at two batch sizes b < B (unbiased estimators, their eq. A.2):
    |G|^2   ~ (B |g_B|^2 - b |g_b|^2) / (B - b)
    tr(S)   ~ (|g_b|^2 - |g_B|^2) / (1/b - 1/B)
The train step gets both for free when it accumulates k >= 2 micro-batches: each micro-batch gradient is a
b-example mean, their sum the B-example mean. Both estimators are noisy, so each is smoothed with an
exponential moving average (over every step, a window of ~100 steps) before the ratio is taken, as the
paper recommends.
"""

from __future__ import annotations

import dataclasses


def unbiased_estimates(sq_small: float, sq_big: float, b_small: float, b_big: float) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from |g_b|^2 and |g_B|^2."""
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@dataclasses.dataclass
class NoiseScale:
    """Running B_simple estimate; feed it one (|g_b|^2, |g_B|^2) pair per step (with that step's two batch
    sizes when they vary, as while the batch ramps up)."""

    b_small: float
    b_big: float
    decay: float = 0.99
    g2: float | None = None
    trace: float | None = None
    count: int = 0

    def update(self, sq_small: float, sq_big: float, b_small: float | None = None, b_big: float | None = None) -> None:
        g2, trace = unbiased_estimates(sq_small, sq_big, b_small or self.b_small, b_big or self.b_big)
        if self.g2 is None:
            self.g2, self.trace = g2, trace
        else:
            self.g2 = self.decay * self.g2 + (1 - self.decay) * g2
            self.trace = self.decay * self.trace + (1 - self.decay) * trace
        self.count += 1

    def running(self) -> dict:
        """The smoothed estimators: a checkpoint keeps them, and `NoiseScale(b, B, **running)` continues them
        (a resumed run's estimates are an uninterrupted one's)."""
        return {"g2": self.g2, "trace": self.trace, "count": self.count}

    @property
    def b_simple(self) -> float | None:
        if self.g2 is None or self.g2 <= 0:
            return None
        return self.trace / self.g2


def advice(b_simple: float | None, batch: int) -> str:
    """A batch-size recommendation: near B_simple, training is still close to perfectly step-efficient;
    far above it, doubling the batch buys little fewer steps (the paper's critical batch size, when the
    Hessian is well conditioned; B_simple can underestimate it otherwise, as the SST-2 sweep suggests)."""
    if b_simple is None or b_simple <= 0:
        return "gradient noise scale: not enough signal yet (need train.accum_steps >= 2 and more steps)"
    ratio = batch / b_simple
    if ratio < 0.5:
        verdict = (f"the batch is well below the noise scale: up to ~{int(b_simple)} sequences should cut "
                   f"steps nearly linearly (scale the LR with optim.scale_rule)")
    elif ratio <= 2:
        verdict = "the batch is near the noise scale: a good trade-off between steps and compute"
    else:
        verdict = (f"the batch is {ratio:.0f}x the noise scale: for SGD, larger batches mostly waste compute and "
                   f"~{int(b_simple)} sequences would use examples more efficiently; B_simple ignores curvature and "
                   f"Adam/LAMB preconditioning, so with those it can sit well below the critical batch (README "
                   f"'Large batches')")
    return f"gradient noise scale B_simple ~ {b_simple:.0f} sequences (batch {batch}): {verdict}"
