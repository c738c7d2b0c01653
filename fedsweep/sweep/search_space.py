"""Search spaces of sweep files: what a ``grid`` key may hold besides a list of values.

A grid key maps to a list (a grid axis: every value is run) or to one of Ray Tune's
sampling domains, written as a one-key mapping::

    method.theta: {loguniform: [0.01, 1.0]}   # tune.loguniform(lo, hi): lo > 0, lo < hi
    method.p: {uniform: [0.1, 0.9]}           # tune.uniform(lo, hi): lo < hi
    solver.epochs: {randint: [1, 5]}          # tune.randint(lo, hi): integers lo .. hi - 1
    method.q: {choice: [0.3, 0.6]}            # tune.choice(options)

Everything here is plain Python, checked before Ray starts; :meth:`Domain.to_tune` is the
only place that meets Tune.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError

KINDS = ("choice", "uniform", "loguniform", "randint")
SCALARS = (str, int, float, bool, type(None))  # what Optuna's categorical distribution accepts


@dataclass(frozen=True)
class Domain:
    """A sampled grid key: ``kind`` is one of :data:`KINDS`; ``args`` the options of a choice,
    else ``(lo, hi)`` (``hi`` excluded, as in Tune)."""

    kind: str
    args: tuple[Any, ...]

    @property
    def options(self) -> list[Any]:
        if self.kind != "choice":
            raise TypeError(f"a {self.kind} domain has no options")
        return list(self.args)

    def candidates(self) -> list[Any]:
        """The values to validate before Ray starts: every option of a choice, else both ends of
        the range (for ``hi``, the largest value a sample can take: ``hi - 1`` for randint, the
        float just below ``hi`` otherwise). The checks are bounds, so the ends stand for the range."""
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args
        if self.kind == "randint":
            return [lo, hi - 1] if hi - 1 > lo else [lo]
        return [float(lo), math.nextafter(float(hi), float(lo))]

    def to_tune(self, options: Sequence[Any] | None = None):
        """The Tune domain; ``options`` replaces a choice's options (composed config groups)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args if options is None else options))
        lo, hi = self.args
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](lo, hi)

    def __str__(self) -> str:
        return f"{{{self.kind}: {list(self.args)}}}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_value(key: str, value: Any) -> list[Any] | Domain:
    """A grid key's value: a non-empty list, or a one-key mapping naming a domain.
    Raises a one-line ConfigError naming the key and the value."""
    where = f"grid.{key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where} must be a non-empty list or a domain ({', '.join(KINDS)}), got []")
        return list(value)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where} must be a non-empty list or a domain such as {{uniform: [lo, hi]}} ({', '.join(KINDS)}), "
            f"got {shown(value)}"
        )
    if len(value) != 1 or next(iter(value)) not in KINDS:
        raise ConfigError(f"{where} must name one domain of {', '.join(KINDS)}, got {shown(dict(value))}")
    (kind, args), = value.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of options, got choice={shown(args)}")
        return Domain("choice", tuple(args))
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise ConfigError(f"{where}: {kind} needs [lo, hi], two finite numbers, got {kind}={shown(args)}")
    lo, hi = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs two integers [lo, hi], got randint={shown(args)}")
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs lo < hi, got {kind}={shown(args)}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < lo, got loguniform={shown(args)}")
    return Domain(kind, (lo, hi))


def is_sampled(value: list[Any] | Domain) -> bool:
    return isinstance(value, Domain)
