"""Errors a user can fix. The CLI prints them as one line and exits non-zero; everything else is a bug."""


class UserError(ValueError):
    """Bad input (unknown task, missing files, malformed YAML, impossible ranges, ...); the message names the fix."""


class ConfigError(UserError):
    """An invalid ElaLoraConfig or search-space entry."""


class DataError(UserError):
    """Task data that cannot be found or read."""
