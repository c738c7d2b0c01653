"""The one exception a user should ever see from bad input."""


class ConfigError(ValueError):
    """A configuration or sweep-file value is invalid.

    The message is one line and names the offending key and value, e.g.
    ``method.theta must be > 0, got method.theta=-0.1``. Raised before any work starts.
    """


class RunError(RuntimeError):
    """A run that cannot go on (e.g. a worker that keeps dying); its message is one line."""


class DivergedError(RunError):
    """The iterate or a metric stopped being finite (the message names the round and the value)."""

    def __init__(self, message: str, *, round: int) -> None:
        super().__init__(message)
        self.round = round
