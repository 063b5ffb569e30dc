"""Progress bar, JSONL metrics and TensorBoard event files: what a run shows and leaves behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

from jaxbatch import metrics
from jaxbatch.errors import WriteError, writing


class EventWriter:
    """TensorBoard scalars written from a thread of their own, so the import and the writes never hold up a
    step. Scalars wait in a queue, so none is lost; `close` waits for the last one. The thread writes with
    tensorboardX's synchronous `EventsWriter`, not its `SummaryWriter`: that one adds a second writer thread
    which dies silently on a full disk and then blocks every later write (and exit) on its bounded queue.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors (we pass floats): that
    import takes ~6 s of a core, which on a 2-core box is taken from the first training steps. Unless
    torch is loaded already, it is hidden while tensorboardX loads (0.8 s)."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        """`purge_step` (a resumed run: the first step after its checkpoint) tells TensorBoard to hide the
        events of earlier segments from that step on, so curves never double."""
        self.folder = Path(folder)
        self._queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None  # set by the thread; the Reporter raises it on the main thread
        self._thread = threading.Thread(target=self._run, args=(purge_step,), name="tensorboard", daemon=True)
        self._thread.start()

    def _run(self, purge_step: int | None) -> None:
        try:
            self._write_events(purge_step)
        except BaseException as e:  # noqa: BLE001  raised on the main thread by Reporter.log / close
            self.error = e

    def _write_events(self, purge_step: int | None) -> None:
        with writing(self.folder):
            hide = "torch" not in sys.modules
            if hide:
                sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
            try:
                from tensorboardX.event_file_writer import EventsWriter
                from tensorboardX.proto.event_pb2 import Event, SessionLog
                from tensorboardX.summary import scalar
            finally:
                if hide:
                    del sys.modules["torch"]
            self.folder.mkdir(parents=True, exist_ok=True)
            events = EventsWriter(str(self.folder / "events"))
            if purge_step is not None:  # as SummaryWriter(purge_step=...) writes it
                events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
                events.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
            while (item := self._queue.get()) is not None:
                tag, value, step = item
                events.write_event(Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))
                if self._queue.empty():  # a burst (one log's scalars) is flushed once
                    events.flush()
            events.close()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._queue.put((tag, value, step))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class Reporter:
    """Writes one JSON object per logged step to `metrics.jsonl` and the same scalars to TensorBoard;
    keeps a tqdm bar with loss, tokens/s and MFU. Only process 0 writes."""

    def __init__(self, run_dir: str | Path, total_steps: int, peak: metrics.Peak, num_devices: int,
                 progress: bool = True, initial_step: int = 0, reevaluating: bool = False):
        self.run_dir = Path(run_dir)
        self.primary = jax.process_index() == 0
        self.start_peak = peak  # per device, where it came from; a faster step raises `self.peak` if measured
        self.peak, self.num_devices = peak.flops * num_devices, num_devices
        self.history: list[dict] = []
        self._last_time, self._last_step = None, initial_step
        self._tokens = self._flops = 0.0
        self.bar = self.tb = self.jsonl = None
        self._failed = False  # a write failed and was raised: close does not raise it again
        if self.primary:
            path = self.run_dir / "metrics.jsonl"
            if path.is_file():  # a resumed run: rows past its checkpoint were not kept, so curves never double
                kept = [r for r in read_metrics(self.run_dir) if r["step"] < initial_step or r["step"] == initial_step
                        and not (reevaluating and r["kind"] == "eval")]  # a finished run's evaluation, run again
                replace_text(path, "".join(json.dumps(r) + "\n" for r in kept))
            with writing(path):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.jsonl = open(path, "a")
            self.tb = EventWriter(self.run_dir / "tensorboard", purge_step=initial_step + 1 if initial_step else None)
            # pyplot takes ~1 s to import (its font list): loaded now, while the first step compiles, not when
            # `plot_curves` draws at the end of the run
            threading.Thread(target=_import_pyplot, name="pyplot-import", daemon=True).start()
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    def start_clock(self, step: int) -> None:
        """Starts timing after compilation, so tokens/s and MFU measure steady-state steps."""
        self._last_time, self._last_step = time.perf_counter(), step
        self._tokens = self._flops = 0.0

    def log(self, step: int, metrics: dict, kind: str = "train") -> dict:
        record = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        if kind == "train" and self._last_time is not None and step > self._last_step:
            now = time.perf_counter()
            elapsed = now - self._last_time
            if self.start_peak.measured and self._flops / elapsed > self.peak:  # MFU never reads above 100%:
                self._raise_peak(self._flops / elapsed)  # the measured peak was low
            record.update(step_time_s=elapsed / (step - self._last_step), tokens_per_s=self._tokens / elapsed,
                          mfu=self._flops / elapsed / self.peak)
            self._last_time, self._last_step = now, step
            self._tokens = self._flops = 0.0
        record = {"step": step, "kind": kind, **record}
        self.history.append(record)
        if self.primary:
            with self._writing(self.jsonl.name):
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()
            if self.tb.error is not None:
                self._failed = True
                raise self.tb.error
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
            if self.bar is not None and kind == "train":
                post = {"loss": f"{record['loss']:.4f}"}
                if "tokens_per_s" in record:
                    post.update(tok_s=f"{record['tokens_per_s']:.0f}", mfu=f"{100 * record['mfu']:.1f}%")
                self.bar.set_postfix(post, refresh=False)
        return record

    def _raise_peak(self, achieved: float) -> None:
        self.write(f"MFU: steps ran at {achieved / self.num_devices / 1e12:.3f} TFLOP/s per device, above the peak "
                   f"measured ({self.peak / self.num_devices / 1e12:.3f}): that is this machine's peak from now on")
        self.peak = achieved
        if self.primary:
            metrics.raise_measured_peak(self.start_peak, achieved / self.num_devices)

    def advance(self, tokens: int, flops: float) -> None:
        """One step done: `tokens` (padded, as computed) and model `flops` it took."""
        self._tokens += tokens
        self._flops += flops
        if self.bar is not None:
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.primary:
            (self.bar.write if self.bar is not None else print)(text)

    @contextlib.contextmanager
    def _writing(self, path):
        try:
            with writing(path):
                yield
        except WriteError:
            self._failed = True
            raise

    def close(self) -> None:
        """Closes the bar and the files; a write failure already raised is not raised again."""
        if self.primary:
            if self.bar is not None:
                self.bar.close()
            try:
                with self._writing(self.jsonl.name):
                    self.jsonl.close()
                self.tb.close()
            except (WriteError, OSError):
                if not self._failed:
                    raise


class StepTrace:
    """A `jax.profiler` trace of `steps` training steps into `folder` (TensorBoard's profile plugin reads it,
    Perfetto its perfetto_trace.json.gz), from the step after `first_step`: the first step of a process
    compiles. Each host traces itself. `close` ends a trace the loop left early (a stop, an early stop)."""

    def __init__(self, folder: Path, first_step: int, steps: int):
        self.folder, self.begin, self.end, self.on = Path(folder), first_step + 1, first_step + 1 + steps, False
        self.steps = steps

    def before(self, step: int) -> None:
        if self.steps and step == self.begin:
            jax.profiler.start_trace(str(self.folder), create_perfetto_trace=True)
            self.on = True

    def after(self, done: int, state) -> str | None:
        """A line to print when the trace is written (after `done`, the last traced step, has finished)."""
        if self.on and done == self.end:
            jax.block_until_ready(state)
            self.close()
            return f"profile of steps {self.begin + 1}-{self.end} written to {self.folder}"
        return None

    def close(self) -> None:
        if self.on:
            self.on = False
            jax.profiler.stop_trace()


def _import_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl. A line that is not a whole row (the last write of a killed process, cut
    short) is skipped rather than failing a resume or a report."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and "kind" in row:
            rows.append(row)
    return rows


def plot_curves(run_dir: str | Path) -> Path | None:
    """curves.png next to metrics.jsonl: train loss (and learning rate) and eval metrics against steps,
    drawn from the whole file, so a resumed run's plot covers every segment."""
    run_dir = Path(run_dir)
    if jax.process_index() != 0 or not (run_dir / "metrics.jsonl").is_file():
        return None
    _import_pyplot()
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    a.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
    a.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    a.legend()
    plotted = False
    for key in ("accuracy", "entity_f1", "macro_f1", "pearson"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            b.plot(*zip(*points), "o-", label=f"eval {key}")
            plotted = True
    lr = b.twinx()
    lr.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="gray", alpha=0.4)
    lr.set_ylabel("learning rate (gray)")
    b.set(xlabel="step", title="eval metrics")
    if plotted:
        b.legend(loc="lower right")
    fig.tight_layout()
    with writing(run_dir / "curves.png"):
        fig.savefig(run_dir / "curves.png", dpi=90)
    plt.close(fig)
    return run_dir / "curves.png"


RUN_FILES = ("metrics.jsonl", "summary.json", "curves.png", "tensorboard", "results.json")


def move_aside(run_dir: Path, checkpoint_dir: Path) -> Path:
    """Moves a previous run's records and checkpoints into `<run_dir>/replaced-<time>/` (nothing is deleted).
    Checkpoints on another disk (`checkpoint.directory`) are renamed beside themselves instead, never copied
    across disks, and linked from there, so the replaced folder stays a run dir that `predict` can read."""
    import shutil

    aside = Path(run_dir) / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
        with writing(aside):  # a move that fails midway (another disk, full) keeps the source
            aside.mkdir(parents=True)
            for path in (Path(run_dir) / n for n in RUN_FILES):
                if path.exists():
                    shutil.move(str(path), aside / path.name)
            ckpt = Path(checkpoint_dir).resolve()
            if ckpt.parent != Path(run_dir).resolve():
                renamed = ckpt.with_name(f"{ckpt.name}.{aside.name}")
                os.replace(ckpt, renamed)
                (aside / "checkpoints").symlink_to(renamed, target_is_directory=True)
            elif ckpt.exists():
                shutil.move(str(ckpt), aside / "checkpoints")
    return aside


def write_json(path: str | Path, obj) -> None:
    """Written whole or not at all (a temporary file renamed over `path`), so a kill never leaves half a file."""
    if jax.process_index() == 0:
        replace_text(Path(path), json.dumps(obj, indent=2, sort_keys=True))


def replace_text(path: Path, text: str) -> None:
    """`path` holds `text` or, when the write fails (a full disk), what it held before: never half of either."""
    partial = path.with_name(path.name + ".partial")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(text)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
