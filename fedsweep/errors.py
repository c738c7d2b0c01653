"""The one exception a user should ever see from bad input."""


class ConfigError(ValueError):
    """A configuration or sweep-file value is invalid.

    The message is one line and names the offending key and value, e.g.
    ``theta must be > 0, got theta=-0.1``. Raised before any work starts.
    """


class RunError(RuntimeError):
    """A run that cannot go on (e.g. a worker that keeps dying); its message is one line."""
