"""experiments.lm_pretrain: its flags are read before anything trains."""

import pytest

from experiments import lm_pretrain


def test_a_negative_sample_count_is_one_line_and_exit_2(tmp_path, capsys):
    """--samples -1 trained the whole run, then failed in a traceback asking for no prompts."""
    with pytest.raises(SystemExit) as stopped:
        lm_pretrain.main(["--data-dir", str(tmp_path), "--samples", "-1"])
    assert stopped.value.code == 2 and "--samples must be >= 0 (0: none), got -1" in capsys.readouterr().err
