"""The error types a user can cause, in one module that imports nothing of jaxbatch, so any module may raise
them without an import cycle. The CLI turns each into one line and exit code 2."""

import contextlib


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key."""


class DataError(ValueError):
    """A data file the run cannot use; the message names the file, line and key."""


class MissingSplit(DataError):
    """A dataset without the split asked for (`split`): `jaxbatch evaluate` scores validation when no split was
    named and there is no test split."""

    def __init__(self, message: str, split: str):
        super().__init__(message)
        self.split = split


class CheckpointError(ValueError):
    """A model or checkpoint folder the run cannot use; the message names the file and key."""


class WriteError(RuntimeError):
    """A run's own records (metrics, TensorBoard events, summary, plot, outputs) could not be written: a full
    disk, a quota, a read-only folder. The message names the file; checkpoints are never touched by it."""


@contextlib.contextmanager
def writing(path):
    """An OSError while writing `path` (a full disk, a quota, a read-only folder) becomes one WriteError
    naming the file and the cause."""
    try:
        yield
    except BrokenPipeError:
        raise  # a reader that closed the pipe (`| head`) has what it wanted: not a failed write
    except OSError as e:
        raise WriteError(f"{e.filename or path}: cannot write ({e.strerror or e})") from e


class TrainingDiverged(RuntimeError):
    """The loss or gradients stayed non-finite for `train.max_bad_steps` steps in a row."""


# Exit codes of `jaxbatch train` (tpu_scripts and SLURM retry loops key on STOPPED, never on the others).
EXIT_BAD_INPUT = 2  # a config, data file or checkpoint the run cannot use, or a folder it cannot write
EXIT_DIVERGED = 3  # stopped by the divergence guard; the newest checkpoint is the last good one
EXIT_STOPPED = 75  # preempted (SIGTERM), Ctrl-C or train.stop_after: checkpoint saved, run again to resume
