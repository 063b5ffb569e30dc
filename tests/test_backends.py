"""backends.py: with libtpu installed and no TPU chips, a process starts only the CPU backend, so a bad input
is one line on stderr, not one line under libtpu's start-up noise."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jax._src import hardware_utils

from jaxbatch import backends

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None or hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0,
    reason="needs libtpu installed on a machine without TPU chips")

ROOT = Path(__file__).parents[1]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run([sys.executable, *args], env={**clean, **env}, capture_output=True, text=True, cwd=ROOT)


def test_a_bad_input_is_exactly_one_line_on_stderr():
    out = _run("-m", "jaxbatch", "train", "model.num_heads=5", "train.progress=false")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["jaxbatch: config error: model.hidden_size=64 is not divisible by "
                                       "model.num_heads=5"], out.stderr


def test_only_the_cpu_starts_without_tpu_chips():
    out = _run("-c", "import jaxbatch, jax; print(jax.config.jax_platforms, jax.devices()[0].platform)")
    assert out.stdout.split() == ["cpu", "cpu"] and "TPU_WORKER_HOSTNAMES" not in out.stderr, out.stderr


def test_the_users_platforms_and_gpu_plugins_are_left_alone(monkeypatch):
    untouched = types.SimpleNamespace(jax_platforms=None, update=lambda *a: pytest.fail(f"changed {a}"))
    monkeypatch.setattr(backends, "jax", types.SimpleNamespace(config=untouched))  # no JAX_PLATFORMS
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: ["xla_cuda12"])  # a GPU plugin
    assert backends.cpu_only_without_tpu_chips() is False
    untouched.jax_platforms = "tpu,cpu"  # JAX_PLATFORMS=tpu,cpu, no plugin
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    assert backends.cpu_only_without_tpu_chips() is False
    untouched.jax_platforms, untouched.update = None, lambda *a: calls.append(a)  # neither: the CPU only
    calls = []
    assert backends.cpu_only_without_tpu_chips() is True and calls == [("jax_platforms", "cpu")]


def test_jax_runs_on_the_cpu_alone_where_told_to_or_nothing_else_is_installed(monkeypatch):
    """What distributed.cpu_one_arena=auto asks before JAX starts (asking JAX would start it)."""
    assert backends.runs_on_cpu("cpu") and backends.runs_on_cpu(" cpu ")
    assert not backends.runs_on_cpu("cuda,cpu") and not backends.runs_on_cpu("tpu")
    installed = {"libtpu"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    assert not backends.runs_on_cpu(None)  # libtpu on a TPU VM (without chips, import jaxbatch chose "cpu")
    installed = set()
    assert backends.runs_on_cpu(None)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: ["xla_cuda12"])
    assert not backends.runs_on_cpu(None)


def test_tpu_slices_are_still_there_to_compile_for():  # test_topology.py compiles for them in-process
    probe = ("import jaxbatch, jax; from jaxbatch import topology; t = topology.target('v5e:2x2'); "
             "print(jax.config.jax_platforms, len(t.devices), t.devices[0].platform)")
    out = _run("-c", probe)
    assert out.stdout.split() == ["cpu", "4", "tpu"], out.stderr[-2000:]
