"""The few exception types users see; each carries one line that names the fix."""


class QuantsearchError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with code 2."""

    exit_code = 2


class ConfigError(QuantsearchError):
    """A job spec, override or CLI argument is invalid."""


class DataError(QuantsearchError):
    """A dataset is missing, corrupt or unknown."""


class ModelError(QuantsearchError):
    """A model name is unknown or cannot be adapted to the data."""


class CheckpointError(QuantsearchError):
    """A checkpoint is missing, corrupt or of an unsupported format version."""


class TrainingError(QuantsearchError):
    """Training diverged (a non-finite loss); the last good checkpoint is kept."""


class OutputError(QuantsearchError):
    """An output file cannot be written: the disk is full, or the folder is read-only or not the user's."""
