"""Errors a user can act on. The command line prints them as one line, without a traceback."""


class SuperDiffusionError(Exception):
    """Base class of every error caused by the user's data, settings or run folder."""


class DataError(SuperDiffusionError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


class ConfigError(SuperDiffusionError):
    """A setting is unknown or out of range."""


class RunFolderError(SuperDiffusionError):
    """The output folder holds another run, or a checkpoint cannot be used."""


class TrainingDiverged(SuperDiffusionError):
    """A loss became NaN or infinite."""


class ScoringError(SuperDiffusionError):
    """A finished training could not be scored; its checkpoints are kept."""
