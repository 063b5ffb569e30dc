"""Multi-host start-up through `jax.distributed`: one process per host, all devices in one global mesh.

On Cloud TPU VMs and under SLURM, `jax.distributed.initialize()` finds the coordinator itself
(`distributed.auto=true`); elsewhere give the coordinator address, the process count and this process's id.
CPU processes (tests, development) talk through gloo collectives.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbatch import backends, host
from jaxbatch.errors import ConfigError, DataError


def cpu_device_count(setting: int) -> int:
    """`distributed.cpu_devices`: -1 means one XLA:CPU device per core this process may run on."""
    return len(os.sched_getaffinity(0)) if setting == -1 else setting


def cpu_devices_dividing(batch: int) -> int:
    """One XLA:CPU device per core, as many as divide `batch` (each device takes an equal share of it): the
    small decoder recipe's CPU default (`experiments.lm_pretrain`)."""
    cores = cpu_device_count(-1)
    return max(d for d in range(1, cores + 1) if batch % d == 0)


def _check(d) -> None:
    if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
        raise ConfigError(f"distributed.process_id={d.process_id} must be in [0, distributed.num_processes="
                          f"{d.num_processes})")
    for key, seconds in (("init_timeout", d.init_timeout), ("heartbeat_timeout", d.heartbeat_timeout)):
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise ConfigError(f"distributed.{key}={seconds!r}: use a whole number of seconds >= 1")
    if d.cpu_one_arena not in ("auto", "true", "false"):
        raise ConfigError(f"distributed.cpu_one_arena={d.cpu_one_arena!r}: use auto, true or false")
    host, _, port = d.coordinator.rpartition(":")
    if d.coordinator and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"distributed.coordinator={d.coordinator!r}: use HOST:PORT, e.g. 10.0.0.2:1234")


def wants_one_arena(cfg) -> bool:
    """`distributed.cpu_one_arena`: auto takes one malloc arena (host.py) when JAX will run on the CPU and a
    device's train step needs more temporaries than a thread's own heap holds, as estimated from the model's
    shape (a pretrained folder's, read here) and its share of the batch (models.train_temp_floats)."""
    setting = cfg.distributed.cpu_one_arena
    if setting != "auto":
        return setting == "true"
    if not backends.runs_on_cpu(jax.config.jax_platforms):
        return False
    from jaxbatch import models

    model = _shape(cfg)
    devices = cpu_device_count(cfg.distributed.cpu_devices) or max(jax.config.jax_num_cpu_devices, 1)
    rows = -(-cfg.train.batch_size // (devices * max(cfg.train.accum_steps, 1)))
    seq_len = cfg.data.seq_len
    return 4 * models.train_temp_floats(model, rows * seq_len, seq_len) > host.THREAD_HEAP


def _shape(cfg):
    """The model's shape and task, read without starting JAX: `run.resolve`'s (a pretrained folder's config.json,
    the task the data names: a language model's logits are a vocabulary wide), except that a run dir named as
    model.pretrained (or as a PEFT adapter's base) gives its newest checkpoint's saved spec (resolving it exports
    the run, which starts JAX), and a vocabulary left to the tokenizer (0) takes the named tokenizer's size (a
    corpus' characters, read with the data, stay 0: a few hundred at most)."""
    from jaxbatch import adapter, checkpoint, hf
    from jaxbatch import run as run_lib
    from jaxbatch.data import tasks

    def run_dir(name: str) -> Path | None:
        """The run dir `name` names, directly or as the base of a PEFT adapter (its LoRA factors add little)."""
        if not isinstance(name, str) or not name or name in hf.KNOWN:
            return None
        if adapter.is_adapter(Path(name)):
            return run_dir(adapter.read_config(Path(name)).get("base_model_name_or_path"))
        return Path(name) if hf.is_run_dir(Path(name)) else None

    task = tasks.dataset_task(cfg.data)
    pretrained = run_dir(cfg.model.pretrained)
    if pretrained is None:
        model = run_lib.resolve(cfg, task=task).model
    else:
        saved = checkpoint.newest_saved_spec(pretrained / "checkpoints")  # fine-tuning keeps the backbone's shape
        model = cfg.model if saved is None else dataclasses.replace(saved.model, num_labels=cfg.model.num_labels)
        model = dataclasses.replace(model, task=task)
    names = cfg.data.tokenizer or cfg.model.pretrained
    if model.vocab_size < 1 and (names or cfg.data.name.startswith("synthetic")):
        spec = dataclasses.replace(cfg, model=model)
        tokenizer_run = run_dir(names)  # a run dir: its own tokenizer folder (exporting it would start JAX)
        tokenizer = (run_lib.tokenizer(spec) if tokenizer_run is None
                     else run_lib.tokenizer(spec, tokenizer_run) if (tokenizer_run / run_lib.TOKENIZER_DIR).is_dir()
                     else None)
        if tokenizer is not None:
            model = dataclasses.replace(model, vocab_size=len(tokenizer))
    return model


def initialize(cfg) -> bool:
    """Sets the CPU device count (and one malloc arena where `wants_one_arena` says) and starts jax.distributed
    when configured; returns whether it started jax.distributed. Must run before any device use.

    Several CPU devices in one process are how XLA:CPU uses several cores on a small model: it runs each
    device's program on a core of its own, while one device runs the small matmuls and fusions of a ~1M-
    parameter model on about one core (benchmarks/README.md, "Decoder step on CPU")."""
    dist_cfg = cfg.distributed
    _check(dist_cfg)
    if wants_one_arena(cfg):
        host.one_arena()
    if dist_cfg.cpu_devices:
        if dist_cfg.cpu_devices < -1:
            raise ConfigError(f"distributed.cpu_devices={dist_cfg.cpu_devices}: use a count, 0 (JAX's default) "
                              f"or -1 (one per core)")
        try:
            jax.config.update("jax_num_cpu_devices", cpu_device_count(dist_cfg.cpu_devices))
        except RuntimeError:
            raise ConfigError(f"distributed.cpu_devices={dist_cfg.cpu_devices}: JAX had started already; it "
                              f"must be set before the first JAX operation") from None
    if not across_hosts(dist_cfg):
        return False
    if dist_cfg.cpu_devices:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = dict(initialization_timeout=dist_cfg.init_timeout, heartbeat_timeout_seconds=dist_cfg.heartbeat_timeout)
    if dist_cfg.auto:
        jax.distributed.initialize(**timeouts)
    else:
        if not dist_cfg.coordinator:
            raise ConfigError("distributed.num_processes > 1 needs distributed.coordinator=HOST:PORT")
        # a process that never joins (a wrong address or count) leaves the others waiting: say for what and how long
        print(f"process {dist_cfg.process_id} of {dist_cfg.num_processes}: joining {dist_cfg.coordinator} (waits "
              f"{dist_cfg.init_timeout} s for every process: distributed.init_timeout)", file=sys.stderr, flush=True)
        jax.distributed.initialize(dist_cfg.coordinator, num_processes=dist_cfg.num_processes,
                                   process_id=dist_cfg.process_id, **timeouts)
    return True


def across_hosts(dist_cfg) -> bool:
    """Whether `initialize` starts jax.distributed: several processes, or the cluster's own (auto)."""
    return dist_cfg.num_processes > 1 or dist_cfg.auto


def same_on_every_host(content: Callable[[], str], where: str, fix: str = "give each the same files") -> None:
    """Every host reads the whole dataset (or input) and computes its share of each batch: a host that read
    other data (a stale copy on one worker's disk) would train, score or label the wrong rows, or wait on the
    others forever. `content()`: what this host read, or its digest (called only across hosts: one process
    spends nothing on it)."""
    if jax.process_count() == 1:
        return
    import hashlib

    import numpy as np
    from jax.experimental import multihost_utils

    try:
        multihost_utils.assert_equal(np.frombuffer(hashlib.sha256(content().encode()).digest(), np.uint8))
    except AssertionError:
        raise DataError(f"{where}: the hosts read different data ({fix})") from None


def describe() -> str:
    return (f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local / "
            f"{jax.device_count()} global devices")


def any_process(local: bool) -> bool:
    """True on every process when it is true on any: hosts stop, save or set a checkpoint aside together."""
    if jax.process_count() == 1:
        return local
    return bool(np.max(multihost_utils.process_allgather(np.asarray(local, np.int32))))
