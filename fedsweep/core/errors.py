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


class SolverError(RunError):
    """A solve that did not reach its tolerance. ``reason`` is ``max_steps`` (the budget ran
    out), ``stalled`` (A stopped decreasing in float64), ``precision`` (x⁺ − c is below what the
    model's dtype resolves), ``overflow`` (every restart ran into non-finite values) or
    ``epochs`` (a fixed-step solve ended above the tolerance). ``what`` names the solve (the
    server's argmin, or a method's own inner loop) and ``advice``, when given, what to change
    instead of the server solver's keys."""

    def __init__(
        self, reason: str, *, residual: float, steps: int, tolerance: float, theta: float,
        what: str = "the argmin", advice: str | None = None,
    ) -> None:  # fmt: skip
        self.reason, self.residual, self.steps, self.tolerance, self.theta = reason, residual, steps, tolerance, theta
        self.what, self.advice = what, advice
        super().__init__(
            f"{what} stopped at residual {residual:.3g} > tolerance {tolerance:g} after {steps} steps ({reason})"
        )
