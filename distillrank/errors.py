"""Errors meant for users: the CLI prints their message and exits without a traceback."""


class DistillrankError(Exception):
    """Base class of every error caused by user input (data, configs, missing artifacts)."""


class DataError(DistillrankError):
    """A collection file is malformed or inconsistent (names the file and line where known)."""


class ConfigError(DistillrankError):
    """A config is invalid: an unknown key or option, a bad value, a target that does not fit."""


class ArtifactError(DistillrankError):
    """A stage's input artifact is missing, incomplete or out of date."""
