"""The fine-tuning recipes' set-up: JAX started with their CPU defaults (the command line winning), and a
user's error as one line and exit code 2, not a traceback."""

import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
SETUP = """
import sys, jax
from experiments import conll2003_ner, finetune
from jaxbatch import host
cfg = finetune.configure(conll2003_ner.DEFAULTS, sys.argv[1:])
print(jax.device_count(), cfg.distributed.cpu_one_arena, host.one_arena.cache_info().currsize)  # 1: applied
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def test_recipes_start_jax_on_one_cpu_device_with_one_arena_and_overrides_win():
    assert _python("-c", SETUP).stdout.split() == ["1", "true", "1"]
    devices, one_arena, _ = _python("-c", SETUP, "distributed.cpu_devices=3", "distributed.cpu_one_arena=false").stdout.split()
    assert (devices, one_arena) == ("3", "false")


def test_a_bad_data_dir_is_one_line_and_exit_code_2(tmp_path):
    for module in ("experiments.conll2003_ner", "experiments.sst2", "experiments.squad"):
        done = _python("-m", module, "--data-dir", str(tmp_path / "missing"), f"train.run_dir={tmp_path / 'run'}")
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        last = done.stderr.splitlines()[-1]
        assert last.startswith("jaxbatch: DataError: ") and f"{tmp_path / 'missing'} does not exist" in last, last


def test_the_shared_driver_run_as_a_recipe_names_the_recipes():
    done = _python("-m", "experiments.finetune")
    assert done.returncode == 1 and "run one of them: python -m experiments.conll2003_ner" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
