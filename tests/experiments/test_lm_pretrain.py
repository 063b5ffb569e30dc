"""experiments.lm_pretrain: its flags are read before anything trains."""

import pytest

from experiments import lm_pretrain


def test_a_negative_sample_count_is_one_line_and_exit_2(tmp_path, capsys):
    """--samples -1 trained the whole run, then failed in a traceback asking for no prompts."""
    with pytest.raises(SystemExit) as stopped:
        lm_pretrain.main(["--data-dir", str(tmp_path), "--samples", "-1"])
    assert stopped.value.code == 2 and "--samples must be >= 0 (0: none), got -1" in capsys.readouterr().err


def test_a_config_file_beats_the_preset_and_the_overrides_beat_the_file(tmp_path):
    """The preset's devices follow the batch the file sets (7 rows: one device), the run dir the command line's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import subprocess_env

    words = "the king and queen spoke to their people while rain fell".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(9))
                                                   for i in range(600)))
    (tmp_path / "recipe.toml").write_text('[train]\nsteps = 4\nbatch_size = 7\neval_every = 4\nrun_dir = "no"\n'
                                          '[optim]\nlearning_rate = 3e-3\n')
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "experiments.lm_pretrain", "--data-dir", str(tmp_path), "--preset",
                           "nanogpt-cpu", "--samples", "0", "--config", str(tmp_path / "recipe.toml"),
                           "data.seq_len=32", f"train.run_dir={run}"], cwd=Path(__file__).resolve().parents[2],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and [e["step"] for e in summary["evals"]] == [4]
    got = summary["config"]
    assert (got["train"]["batch_size"], got["optim"]["learning_rate"], got["data"]["seq_len"]) == (7, 3e-3, 32)
    assert got["distributed"]["cpu_devices"] == 1 and got["model"]["num_layers"] == 4  # nanoGPT's 4 x 128 kept
