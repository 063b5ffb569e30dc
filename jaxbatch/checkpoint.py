"""Orbax checkpoints of the whole run: sharded TrainState + the grain iterator's position + the resolved
spec + a fingerprint of every array, saved asynchronously as one Composite, so a resumed run continues
bit-for-bit where it stopped, and a run dir alone rebuilds the model (`read_spec` + `restore_params`: no
optimizer state, onto any mesh).

Integrity: Orbax writes each checkpoint to a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoint as the latest; what it cannot see is a file damaged afterwards.
So each save also stores, per array, the wrapping uint32 sum of its bit patterns (computed in one jitted
reduction over the sharded arrays; integer sums are exact whatever the sharding), and every restore
recomputes and compares it. A checkpoint that fails to load or to verify is moved aside into
`<checkpoints>/unusable/` (never deleted) and the previous one is tried. Non-finite parameters are never
saved.

The best checkpoint (checkpoint.best_metric, as Hugging Face's load_best_model_at_end): each checkpoint then
carries Orbax metrics (`Best.metrics`: the metric at that step, if it was evaluated there, the best value so
far and the evaluations since it), Orbax's preservation policy keeps the best one beside the latest
`max_to_keep`, inference reads it first (`ranked_steps`), and a resumed run reads its early-stopping state
back from the newest checkpoint.

SIGTERM (a preemption notice on most clusters and Cloud TPU) and a first Ctrl-C ask the loop to save
at the end of the current step and stop; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import sys
import time
import zlib
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxbatch import config, distributed, host
from jaxbatch import mesh as mesh_lib
from jaxbatch.errors import CheckpointError, ConfigError, TrainingDiverged


def _words(x: jax.Array) -> jax.Array:
    """An array's bit patterns as uint32 words (1-, 2- and 4-byte dtypes)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[np.dtype(x.dtype).itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _fingerprint(leaves):
    sums = [_words(x).sum(dtype=jnp.uint32) for x in leaves]
    finite = [jnp.isfinite(x).all() for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    return sums, jnp.all(jnp.stack(finite)) if finite else jnp.asarray(True)


@functools.cache
def _fingerprint_fn(platform: str):
    return jax.jit(_fingerprint, compiler_options=host.run_once_options(platform))


def _fingerprint_program(leaves):
    """The fingerprint's jitted function for the platform these arrays live on."""
    return _fingerprint_fn(next(iter(leaves[0].devices())).platform)


def fingerprint(tree) -> tuple[dict[str, int], bool]:
    """({array path: uint32 sum of its words}, whether every float array is finite)."""
    paths, leaves = zip(*jax.tree_util.tree_leaves_with_path(tree))
    jax.block_until_ready(leaves)  # the step that made them has finished everywhere (see steps.Steps._launch)
    sums, finite = jax.device_get(_fingerprint_program(leaves)(list(leaves)))
    return {jax.tree_util.keystr(p): int(v) for p, v in zip(paths, sums)}, bool(finite)


_LOOP_KEY = "loop record"  # the fingerprint's entry for `save`'s loop: not an array path (those start with ".")


def _json_crc(obj) -> int:
    """CRC-32 of a JSON object's canonical text (a float's repr reads back exactly: equal after the round trip)."""
    return zlib.crc32(json.dumps(obj, sort_keys=True).encode())


def compile_fingerprint(tree) -> None:
    """Compiles `fingerprint` for this tree's arrays now rather than at the first save (the train loop
    calls it while the train step compiles on another core)."""
    leaves = jax.tree.leaves(tree)
    _fingerprint_program(leaves).lower(leaves).compile()


@functools.cache
def _whole_arrays_on_cpu() -> None:
    """On CPU devices, arrays are saved whole by their first replica. Orbax's default splits a replicated
    array among its replicas, which slices it on device first: one small compile per array shape, ~0.7 s of
    the first save of a 0.8M-parameter decoder on 2 CPU devices, and no gain where the devices share one
    host's memory (Orbax makes the same choice for GPUs)."""
    if jax.devices()[0].platform == "cpu":  # (Orbax exports neither the default's store nor a quiet override)
        from orbax.checkpoint._src.metadata import array_metadata_store
        from orbax.checkpoint._src.serialization import type_handler_registry

        type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()), override=True,
            ignore_warnings=True)


def _is_not_read_only_notice(record: logging.LogRecord) -> bool:
    """Orbax warns that a folder opened read-only is read only and that it will therefore neither save nor
    prune: opening a run dir for inference is not news."""
    return not (record.pathname.endswith("checkpoint_manager.py")
                and ("read only" in str(record.msg) or "read_only=True" in str(record.msg)))


MINIMIZED = ("loss", "perplexity", "bits_per_byte")  # eval metrics where lower is better


@dataclasses.dataclass(frozen=True)
class Best:
    """The eval metric that ranks checkpoints, whether higher or lower is better, the best value so far and
    the evaluations since it (what early stopping counts)."""

    name: str
    mode: str  # max | min
    value: float | None = None
    step: int | None = None  # where `value` was reached
    since: int = 0

    @classmethod
    def of(cls, ckpt_cfg) -> Best | None:
        """From config (checkpoint.best_metric, checkpoint.best_mode); None when no metric is named."""
        if not ckpt_cfg.best_metric:
            return None
        auto = "min" if ckpt_cfg.best_metric in MINIMIZED else "max"
        return cls(ckpt_cfg.best_metric, auto if ckpt_cfg.best_mode == "auto" else ckpt_cfg.best_mode)

    def update(self, value: float, step: int) -> Best:
        """After an evaluation: a strictly better value (never NaN) becomes the best, else one more without."""
        better = not math.isnan(value) and (self.value is None or (value > self.value if self.mode == "max"
                                                                   else value < self.value))
        if better:
            return dataclasses.replace(self, value=value, step=step, since=0)
        return dataclasses.replace(self, since=self.since + 1)

    def metrics(self, value: float | None) -> dict:
        """What a checkpoint stores (`value`: the metric at its step, None when it was not evaluated there)."""
        return {"name": self.name, "mode": self.mode, "value": value, "best": self.value, "best_step": self.step,
                "since_best": self.since}

    def resumed(self, metrics: dict) -> Best:
        """The state saved with the checkpoint a run resumes from (kept only if it ranked by this metric)."""
        if metrics.get("name") != self.name or metrics.get("mode") != self.mode or not isinstance(
                metrics.get("since_best"), int):
            return self
        return dataclasses.replace(self, value=metrics["best"], step=metrics["best_step"], since=metrics["since_best"])

    def describe(self) -> str:
        where = f"{self.value:.4f} at step {self.step}" if self.value is not None else "none yet"
        return f"best {self.name} ({self.mode}): {where}"

    def score(self, metrics) -> float:
        """Orbax's ranking of checkpoints: a checkpoint that set a new best has its value; any other loses (a
        run's new bests are strictly better each time, so the newest of them is the best)."""
        ok = set_a_best(metrics) and metrics.get("name") == self.name
        return metrics["value"] if ok else (-math.inf if self.mode == "max" else math.inf)


def set_a_best(metrics) -> bool:
    """Whether the ranking saved with a checkpoint says its evaluation set a new best (a number)."""
    return (isinstance(metrics, dict) and metrics.get("since_best") == 0
            and isinstance(metrics.get("value"), (int, float)) and not isinstance(metrics["value"], bool))


def newest_saved_spec(directory: Path) -> config.Config | None:
    """The spec saved with the newest finished checkpoint under `directory`, read as the JSON file Orbax wrote
    (`<step>/spec/metadata`) rather than through its manager, which starts JAX's backends: for choices made
    before they start (distributed.wants_one_arena). None where no checkpoint's spec reads."""
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    for step in steps:
        folder = directory / str(step)
        try:
            if (folder / "commit_success.txt").is_file():
                return config.from_dict(json.loads((folder / "spec" / "metadata").read_text()))
        except (OSError, ValueError, TypeError, ConfigError):
            continue
    return None


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, except that a damaged metrics file (the ranking saved with a checkpoint) leaves that
    checkpoint unranked, and is recorded in `damaged_metrics`, instead of making the whole folder unopenable
    (Orbax reads every step's metrics when it opens one, and raises on the first that does not parse)."""

    def __init__(self, *args, **kwargs):
        self.damaged_metrics: set[int] = set()  # before Orbax's constructor, which reads the metrics
        super().__init__(*args, **kwargs)

    def _get_metrics(self, step: int):
        try:
            return super()._get_metrics(step)
        except (ValueError, OSError, TypeError):  # JSONDecodeError is a ValueError
            self.damaged_metrics.add(step)
            return None


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 3, read_only: bool = False, best: Best | None = None):
        _whole_arrays_on_cpu()
        logging.getLogger("absl").addFilter(_is_not_read_only_notice)  # once: a filter is added once
        self.directory = Path(directory).absolute()
        keep = dict(max_to_keep=max_to_keep)
        if best is not None and not read_only:  # the latest max_to_keep, and the best one
            policies = ocp.checkpoint_managers
            keep = dict(best_fn=best.score, best_mode=best.mode, preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=max_to_keep),
                policies.BestN(get_metric_fn=best.score, reverse=best.mode == "min", n=1,
                               keep_checkpoints_without_metrics=False)]))
        self.manager = _Manager(self.directory, options=ocp.CheckpointManagerOptions(
            **keep, create=not read_only, read_only=read_only))
        self.stop_requested = ""  # the name of the signal that asked the run to save and stop
        self._failed = False  # a save failed and was reported
        self._previous_handlers: dict = {}

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, spec: config.Config, identity: dict | None = None,
             metrics: dict | None = None, loop: dict | None = None) -> None:
        """Starts an asynchronous save (the next save, or `close`, waits for it), with `Best.metrics` when
        checkpoints are ranked and `loop`, what the train loop keeps on the host (`read_loop`). Raises
        TrainingDiverged rather than write non-finite parameters."""
        sums, finite = fingerprint(state)
        if not finite:
            raise TrainingDiverged(f"step {step}: the state holds non-finite values; not saved (the newest "
                                   f"checkpoint stays the last good one)")
        with self._writing():  # the previous save's failure surfaces in the wait (Orbax's save would wait too)
            self.manager.wait_until_finished()
            self.check_space(state)  # after the wait: the previous save's bytes are on disk
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
                spec=ocp.args.JsonSave(config.to_dict(spec)),
                fingerprint=ocp.args.JsonSave({**sums, _LOOP_KEY: _json_crc(loop or {})}),
                identity=ocp.args.JsonSave(identity or {}), loop=ocp.args.JsonSave(loop or {})), metrics=metrics)

    def newest_complete(self) -> str:
        """'step N' for the newest checkpoint on disk (a save that failed is not one), else 'none yet'."""
        self.manager.reload()
        step = self.manager.latest_step()
        return "none yet" if step is None else f"step {step}"

    def check_space(self, state) -> None:
        """Refuses to start a save the disk cannot hold (a full disk mid-save costs a half-written folder and a
        page of Orbax errors); the estimate is this process' share of the state's bytes."""
        needed = sum(x.nbytes for x in jax.tree.leaves(state)) // jax.process_count() + (16 << 20)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(f"{self.directory}: {free / 2**20:.1f} MiB free, a checkpoint needs about "
                                  f"{needed / 2**20:.1f} MiB; nothing was written (the newest complete checkpoint "
                                  f"is {self.newest_complete()}): free space and run again")

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (disk full, quota, permissions: Orbax and TensorStore raise OSError or ValueError) is
        one CheckpointError naming the cause and the newest complete checkpoint, which it never touches."""
        try:
            yield
        except (OSError, ValueError) as e:
            self._failed = True
            code = re.search(r"os_error_code='(\d+)'", str(e))
            cause = os.strerror(int(code[1])) if code else (getattr(e, "strerror", None) or str(e).strip()[:200])
            raise CheckpointError(f"{self.directory}: writing a checkpoint failed ({cause}); the newest complete "
                                  f"checkpoint is {self.newest_complete()}: fix that and run again (it resumes "
                                  f"from there)") from e

    def restore(self, step: int, state_like, state_shardings, data_iterator):
        """The state at `step`, placed with `state_shardings` (any mesh: Orbax reshards), verified against
        its fingerprint, and the iterator moved to where it was (by another number of hosts too)."""
        own = self.directory / str(step) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        data = {"data": grain.checkpoint.CheckpointRestore(data_iterator)} if own.is_file() else {}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(mesh_lib.abstract_with_shardings(state_like, state_shardings)),
            fingerprint=ocp.args.JsonRestore(), **data))
        self._verify(step, restored.state, restored.fingerprint)
        if not data:  # saved by another number of processes: grain's restore reads only a file of this count
            self._take_saved_position(step, data_iterator)
        position = data_iterator.get_state().get("next_index", step)  # a batch a step, on every process
        if distributed.any_process(position != step):
            raise CheckpointError(f"step {step}: its data iterator's saved position is not batch {step}"
                                  + (f" (here: {position})" if position != step else " on another process"))
        return restored.state

    def _take_saved_position(self, step: int, data_iterator) -> None:
        """Sets the iterator to the position the checkpoint's processes saved (grain's `process_I-of-N.json`, one
        per process). Every host reads its slice of each global batch, so each saved the same position (its
        step's batch); any of them is this process' whatever the number of hosts now."""
        saved = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
        states = [json.loads(path.read_text()) for path in saved]
        if not states or any(state != states[0] for state in states):
            raise CheckpointError(f"step {step}: " + ("no data iterator position saved" if not states else
                                                      "its processes saved different data iterator positions"))
        data_iterator.set_state(states[0])

    @staticmethod
    def _verify(step: int, tree, saved: dict, prefix: str = "") -> None:
        sums, _ = fingerprint(tree)
        bad = [k for k, v in sums.items() if saved.get(prefix + k) != v]
        if bad:
            raise CheckpointError(f"step {step}: {len(bad)} array(s) differ from their fingerprint at save time "
                                  f"(first: {bad[0]})")

    def restore_latest(self, state_like, state_shardings, data_iterator, warn=print):
        """The newest checkpoint that loads and verifies, or None when there is none. Each unusable one is
        reported by step and reason and moved to `unusable/`; the previous one is tried next. So is one whose
        saved ranking does not parse (kept, it would rank last and be pruned while it may be the best)."""
        for step in self.damaged_metrics():
            warn(f"warning: checkpoint step {step}: its ranking (metrics) is unreadable; moved to "
                 f"{self.move_aside(step)}")
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, state_like, state_shardings, data_iterator)
            except Exception as e:  # noqa: BLE001  Orbax, TensorStore and grain raise many types for bad files
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                warn(f"warning: checkpoint step {step} is unusable ({type(e).__name__}: {reason}); moved to "
                     f"{self.move_aside(step)}; trying the previous one")
        return None

    def metrics(self, step: int) -> dict:
        """The `Best.metrics` saved with a step ({} when it has none or they do not parse)."""
        found = self.manager.metrics(step)
        return found if isinstance(found, dict) else {}

    def damaged_metrics(self) -> list[int]:
        """Steps whose saved ranking could not be read (see `_Manager`)."""
        return sorted(self.manager.damaged_metrics)

    def ranked_steps(self) -> list[int]:
        """The steps in the order inference tries them: when the newest checkpoint was saved ranked, the best
        by that metric first; then the others, newest first."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        newest = self.metrics(steps[0]) if steps else {}
        if not newest.get("name"):  # the run saved its newest checkpoint unranked: the newest is the model
            return steps
        best = Best(newest["name"], newest["mode"])
        saved = {step: self.metrics(step) for step in steps}
        ranked = sorted((s for s in steps if best.score(saved[s]) not in (math.inf, -math.inf)),
                        key=lambda s: best.score(saved[s]), reverse=best.mode == "max")
        return ranked + [s for s in steps if s not in ranked]

    def move_aside(self, step: int) -> Path:
        """Moves a step's folder into `unusable/` (never deletes it) and forgets it."""
        target = self.directory / "unusable" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), target)
        self.manager.reload()
        return target

    def read_spec(self, step: int) -> config.Config:
        """The resolved spec the checkpoint was written with."""
        try:
            return config.from_dict(self.manager.restore(step, args=ocp.args.Composite(
                spec=ocp.args.JsonRestore())).spec)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise CheckpointError(f"{self.directory}/{step}: cannot read the run's spec ({e})") from e

    def read_identity(self, step: int) -> dict:
        """What the run trained on (example count and content digest of the training split)."""
        return self.manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore())).identity

    def read_loop(self, step: int) -> dict:
        """What the train loop kept on the host at `step` (`save`'s `loop`), so a resumed run reports what an
        uninterrupted one would; {} for a checkpoint written without it (before it was saved), or whose record
        does not read or does not match the CRC-32 kept in its fingerprint."""
        try:
            found = self.manager.restore(step, args=ocp.args.Composite(
                loop=ocp.args.JsonRestore(), fingerprint=ocp.args.JsonRestore()))
        except (FileNotFoundError, ValueError, KeyError, OSError):
            return {}
        ok = isinstance(found.loop, dict) and found.fingerprint.get(_LOOP_KEY) == _json_crc(found.loop)
        return found.loop if ok else {}

    def restore_params(self, step: int, abstract_params, params_shardings):
        """Only the parameters of the state at `step` (no optimizer moments are read), placed with
        `params_shardings` on whatever mesh they name, verified against the save-time fingerprint."""
        item = {"params": mesh_lib.abstract_with_shardings(abstract_params, params_shardings)}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), item)
        try:
            restored = ocp.PyTreeCheckpointer().restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
            saved = self.manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore())).fingerprint
        except Exception as e:  # noqa: BLE001  damaged files surface as many error types
            raise CheckpointError(f"{self.directory}/{step}: cannot read the parameters ({type(e).__name__}: "
                                  f"{str(e).strip()[:300]})") from e
        self._verify(step, restored["params"], saved, prefix=".params")
        return restored["params"]

    def handle_signals(self) -> None:
        """After this, SIGTERM, a hang-up and a first Ctrl-C set `stop_requested` to the signal's name (the loop
        saves and stops); a second Ctrl-C exits at once without saving (the previous checkpoint stays). A
        hang-up (the ssh session or terminal that started the run is gone) first points output that does not go
        to a file at /dev/null, so the steps up to the save do not fail writing to it; a run started
        under `nohup` (hang-ups ignored) keeps running."""
        def on_term(signum, frame):
            if signum == signal.SIGINT and self.stop_requested:
                print("\nsecond Ctrl-C: exiting now without saving", file=sys.stderr)
                os._exit(130)
            if signum == signal.SIGHUP:  # a terminal, or a pipe into `tee` that went with it (a hung-up
                for fd in (1, 2):        # terminal is no longer a tty to isatty); a log file keeps its lines
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            self.stop_requested = signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("\nCtrl-C: saving a checkpoint at the end of this step (press again to exit at once)",
                      file=sys.stderr)

        wanted = [signal.SIGTERM, signal.SIGINT]
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # not under nohup
            wanted.append(signal.SIGHUP)
        self._previous_handlers = {sig: signal.signal(sig, on_term) for sig in wanted}

    def wait(self) -> None:
        """Waits for the save under way; a failed one raises CheckpointError, once."""
        if not self._failed:
            with self._writing():
                self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the last save (as `wait`) and lets go of the folder."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except (OSError, ValueError):
                if not self._failed:  # a failure already reported is not reported twice
                    raise
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
            self._previous_handlers = {}
