"""The error types a user can cause, in one module that imports nothing, so any module may raise them
without an import cycle. The CLI turns each into one line and exit code 2."""


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key."""


class DataError(ValueError):
    """A data file the run cannot use; the message names the file, line and key."""


class CheckpointError(ValueError):
    """A model or checkpoint folder the run cannot use; the message names the file and key."""
