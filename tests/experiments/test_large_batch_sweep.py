import json

import pytest

from experiments import large_batch_sweep as sweep
from jaxbatch import train

ARGS = ["--batches", "16,64", "--epochs", "0.5", "--micro-batch", "32", "--evals", "4", "model.num_layers=1",
        "data.num_train=512", "data.num_eval=64", "data.seq_len=16", "mesh.data=8"]


def test_steps_to_target_is_the_first_evaluation_at_or_above_it():
    curve = [(40, 0.91), (10, 0.50), (20, 0.80), (30, 0.79)]  # unsorted; dips after reaching
    assert sweep.steps_to_target(curve, 0.80) == 20
    assert sweep.steps_to_target(curve, 0.85) == 40
    assert sweep.steps_to_target(curve, 0.95) is None


def test_summary_target_ratios_and_advisor_on_synthetic_points():
    def point(variant, batch, seed, evals, noise):
        return {"variant": variant, "batch": batch, "seed": seed, "steps": 100, "samples": 100 * batch,
                "wall_time_s": 1.0, "learning_rate": 1e-3, "evals": evals, "best": max(v for _, v in evals),
                "final": evals[-1][1], "noise_scale": 10 * noise, "noise_scale_run": noise}
    points = [point("a", 32, 0, [(100, 0.80), (200, 0.90)], 100.0),
              point("a", 32, 1, [(100, 0.85), (300, 0.92)], 300.0),
              point("a", 128, 0, [(25, 0.895), (50, 0.90)], 200.0),
              point("a", 128, 1, [(25, 0.80), (50, 0.899)], 200.0)]
    variants = [{"name": "a"}]
    args = type("A", (), {"target_drop": 0.005})()
    report = sweep.summarize(points, [32, 128], variants, "accuracy", args)
    assert report["target"] == pytest.approx(0.905)  # median(0.90, 0.92) - 0.005
    r32, r128 = report["rows"]
    assert (r32["reached"], r32["steps_to_target"]) == ("1/2", None)  # only seed 1 (step 300): not a majority
    assert (r128["reached"], r128["steps_to_target"]) == ("0/2", None)
    points.append(point("b", 32, 0, [(100, 0.70), (200, 0.80)], 50.0))  # a weaker variant: its own target 0.77
    points.append(point("b", 128, 0, [(25, 0.79)], 50.0))
    variants.append({"name": "b"})
    report = sweep.summarize(points, [32, 128], variants, "accuracy", type("A", (), {"target_drop": 0.03})())
    b32, b128 = report["rows"][2:]
    assert (b32["steps_to_target"], b32["steps_to_own_target"], b128["steps_to_own_target"]) == (None, 200, 25)
    assert b128["own_step_ratio"] == 0.125 and b128["own_target"] == pytest.approx(0.77)
    r32, r128 = report["rows"][:2]  # target 0.88: b32 at 200 and 300 -> 250; b128 at 25 and 50 -> 37.5
    assert (r32["steps_to_target"], r128["steps_to_target"], r128["step_ratio"]) == (250, 37.5, 0.15)
    # S(B) = S_min + E_min / B through (32, 250) and (128, 37.5): E_min = 9066.7, S_min = -33.3 < 0: B_crit unknown
    a, b = report["advisor"]
    assert (a["b_simple"], a["b_crit"], a["fewest_examples_batch"]) == (200.0, None, 128)  # 37.5 x 128 < 250 x 32
    # variant b, own target: S(32) = 200, S(128) = 25 -> E_min = 175 / (1/32 - 1/128) = 7466.7, S_min = -33.3: none
    assert b["b_crit_own"] is None and b["b_simple"] == 50.0


def test_critical_batch_from_steps_to_target():
    """McCandlish et al.: S(B) = S_min (1 + B_crit / B); steps 100 + 32000 / B give B_crit = 320."""
    b_crit, s_min, e_min = sweep.critical_batch([(b, 100 + 32000 / b) for b in (32, 256, 1024)])
    assert (b_crit, s_min, e_min) == pytest.approx((320, 100, 32000))
    assert sweep.critical_batch([(32, 100)]) == (None, None, None)
    assert sweep.critical_batch([(32, 1000), (1024, 1000 * 32 / 1024)])[0] is None  # perfect scaling: beyond 1024


def test_sweep_writes_its_views_skips_finished_points_and_extends(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    report = sweep.run([*ARGS, "--variants", "lamb:sqrt", "--run-dir", str(out)])
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    assert [(p["batch"], p["steps"], p["accumulation"]) for p in report["points"]] == [(16, 16, 2), (64, 4, 2)]
    assert rows["lamb:sqrt", 64]["learning_rate"] == pytest.approx(1e-2 * 2**0.5)  # sqrt(64 / 32)
    assert all(len(p["evals"]) == 4 and p["samples"] == 256 for p in report["points"])
    assert json.loads((out / "sweep.json").read_text())["target"] == report["target"]
    assert (out / "sweep.md").read_text().count("\n| lamb:sqrt |") == 3  # two batches + the advisor row
    assert (out / "sweep.png").stat().st_size > 10_000

    def no_training(cfg):
        raise AssertionError(f"finished point trained again: {cfg.train.run_dir}")
    monkeypatch.setattr(train, "train", no_training)  # a re-run reads every point back
    assert sweep.run([*ARGS, "--variants", "lamb:sqrt", "--run-dir", str(out)])["rows"] == report["rows"]
    monkeypatch.undo()
    trained = []
    monkeypatch.setattr(train, "train", lambda cfg: trained.append(cfg.train.run_dir) or _real_train(cfg))
    more = sweep.run([*ARGS, "--variants", "lamb:sqrt,adamw:none", "--run-dir", str(out)])  # only the new variant runs
    assert sorted(trained) == [str(out / "adamw_none" / "b16" / "s0"), str(out / "adamw_none" / "b64" / "s0")]
    assert more["rows"][:2] == report["rows"]
    assert more["rows"][3]["learning_rate"] == pytest.approx(1e-3)  # no scaling
    monkeypatch.setattr(train, "train", no_training)  # --report: seed 1 never ran, so only seed 0 is reported
    report = sweep.run([*ARGS, "--variants", "lamb:sqrt,adamw:none", "--seeds", "0,1", "--report", "--run-dir", str(out)])
    assert report["rows"] == more["rows"] and all(r["seeds"] == 1 for r in report["rows"])


_real_train = train.train


@pytest.mark.parametrize("flags, message", [(["--batches", "0"], "--batches '0': give comma-separated whole numbers"),
                                            (["--batches", "32,x"], "--batches '32,x': give comma-separated"),
                                            (["--seeds", "-1"], "--seeds '-1': give comma-separated whole numbers >= 0"),
                                            (["--epochs", "0"], "--epochs must be > 0, got 0.0")])
def test_bad_flags_are_one_line_and_exit_2(flags, message, capsys):
    """A zero batch was a ZeroDivisionError's traceback; every flag is read before anything trains."""
    with pytest.raises(SystemExit) as stopped:
        sweep.run(flags)
    assert stopped.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
