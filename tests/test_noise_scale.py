import jax
import numpy as np
import pytest

from conftest import random_batch, run_steps, tiny_config
from jaxbatch import accumulate, noise_scale


def test_recovers_known_noise_scale_on_a_quadratic():
    """Loss 1/2 |w - x|^2 with x ~ N(mu, diag(s)): per-example gradient w - x, true gradient w - mu,
    covariance diag(s), so B_simple = sum(s) / |w - mu|^2 exactly."""
    rng = np.random.default_rng(0)
    dim, b_small, b_big = 50, 8, 64
    w, mu, s = np.zeros(dim), rng.normal(size=dim), rng.uniform(0.5, 2.0, dim)
    truth = s.sum() / np.sum((w - mu) ** 2)
    est = noise_scale.NoiseScale(b_small, b_big, decay=0.99)
    for _ in range(3000):
        x = mu + rng.normal(size=(b_big, dim)) * np.sqrt(s)
        grads = w - x
        small = np.mean([np.sum(grads[i:i + b_small].mean(0) ** 2) for i in range(0, b_big, b_small)])
        est.update(small, np.sum(grads.mean(0) ** 2))
    assert est.b_simple == pytest.approx(truth, rel=0.1)


def test_advice_wording():
    assert "well below" in noise_scale.advice(1000.0, 32)
    assert "near the noise scale" in noise_scale.advice(40.0, 32)
    assert "waste compute" in noise_scale.advice(10.0, 320)
    assert "not enough signal" in noise_scale.advice(None, 32)


def test_train_step_reports_both_batch_sizes():
    """|g_b|^2 averaged over micro-batches exceeds |g_B|^2 (smaller batches are noisier), and equals the
    norm of each micro-batch's own gradient computed separately."""
    cfg = tiny_config("model.hidden_dropout=0", "train.batch_size=16", "train.accum_steps=2", "mesh.data=2")
    batch = random_batch(cfg, 0)
    _, hist, _ = run_steps(cfg, [batch], jax.devices()[:2])
    assert hist[0]["grad_sq_small"] > hist[0]["grad_sq_big"] > 0
    micro = jax.tree.map(np.asarray, accumulate.split_micro_batches(batch, 2))
    single = tiny_config("model.hidden_dropout=0", "train.batch_size=8", "mesh.data=1", "optim.clip_norm=0")
    norms = [run_steps(single, [{k: v[i] for k, v in micro.items()}], jax.devices()[:1])[1][0]["grad_norm"] ** 2
             for i in range(2)]
    assert hist[0]["grad_sq_small"] == pytest.approx(np.mean(norms), rel=1e-4)


def test_every_step_feeds_the_estimate_whatever_the_logging_cadence(tmp_path):
    """The loop fetches each step's pair at the next log: logging every step or every 4th gives the same
    B_simple, equal to the moving average of the per-step pairs."""
    import json

    from jaxbatch import train

    args = ["train.batch_size=16", "train.accum_steps=2", "mesh.data=8", "train.steps=8", "train.eval_every=0",
            "data.num_train=128", "data.seq_len=16"]
    every = train.train(tiny_config(*args, "train.log_every=1", f"train.run_dir={tmp_path / 'a'}"))
    fourth = train.train(tiny_config(*args, "train.log_every=4", f"train.run_dir={tmp_path / 'b'}"))
    rows = [r for r in map(json.loads, open(tmp_path / "a" / "metrics.jsonl")) if r["kind"] == "train"]
    est = noise_scale.NoiseScale(8, 16)
    for r in rows:
        est.update(r["grad_sq_small"], r["grad_sq_big"])
    assert len(rows) == 8
    assert every.summary["noise_scale"] == pytest.approx(est.b_simple, rel=1e-6)
    assert fourth.summary["noise_scale"] == pytest.approx(est.b_simple, rel=1e-5)
