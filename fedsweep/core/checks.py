"""Range checks for config values: one rule table, one-line errors naming the key and the value.

    check("method.theta", theta, "> 0")   # ConfigError: method.theta must be a finite number > 0, got method.theta=-1

Every numeric rule asks for a finite number (so ``inf`` and ``nan`` are refused) and refuses
booleans; long values are shortened in the message (``shown``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from fedsweep.core.errors import ConfigError

SHOWN = 80  # characters of a value an error message shows
MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both take this range


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool); an int past the largest float is not (it overflows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= sys.float_info.max if isinstance(value, int) else math.isfinite(value)


RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "> 0": (lambda v: is_number(v) and v > 0, "a finite number > 0"),
    ">= 0": (lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
    "(0, 1)": (lambda v: is_number(v) and 0 < v < 1, "in (0, 1)"),
    "(0, 1]": (lambda v: is_number(v) and 0 < v <= 1, "in (0, 1]"),
    "[0, 1)": (lambda v: is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "[0, 1]": (lambda v: is_number(v) and 0 <= v <= 1, "in [0, 1]"),
    "int >= 1": (lambda v: is_int(v) and v >= 1, "a positive integer"),
    "int >= 0": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "int >= 1 or null": (lambda v: v is None or (is_int(v) and v >= 1), "a positive integer or null"),
    "> 0 or null": (lambda v: v is None or (is_number(v) and v > 0), "a finite number > 0 or null"),
    "(0, 1] or null": (lambda v: v is None or (is_number(v) and 0 < v <= 1), "in (0, 1] or null"),
    "seed": (lambda v: is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "seed or null": (lambda v: v is None or (is_int(v) and 0 <= v <= MAX_SEED), f"an integer in [0, {MAX_SEED}] or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bool or auto": (lambda v: isinstance(v, bool) or v == "auto", "auto, true or false"),
    "share": (lambda v: v is None or (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
              "null, a fraction in (0, 1] or a count >= 1"),  # fmt: skip
}


OPTIMIZER_RANGES = {  # the usual torch.optim hyperparameters, checked by name before the optimizer checks the rest
    "lr": "> 0", "eps": ">= 0", "momentum": "[0, 1)", "dampening": "[0, 1]", "weight_decay": ">= 0",
    "lr_decay": ">= 0", "initial_accumulator_value": ">= 0",
}  # fmt: skip
"""torch accepts ``lr=inf`` or ``nan`` (and ``eps=inf``), which only show as a diverged run."""


def shown(value: object) -> str:
    """``repr(value)``, cut to ``SHOWN`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300 digits
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def check(key: str, value: object, rule: str) -> None:
    """ConfigError unless ``value`` satisfies ``rule`` (a key of ``RULES``)."""
    ok, description = RULES[rule]
    if not ok(value):
        raise ConfigError(f"{key} must be {description}, got {key}={shown(value)}")


def check_keys(prefix: str, **items: tuple[object, str]) -> None:
    """``check(f"{prefix}.{name}", value, rule)`` for every ``name=(value, rule)``."""
    for name, (value, rule) in items.items():
        check(f"{prefix}.{name}", value, rule)


def first_line(err: BaseException) -> str:
    """An exception's first non-empty line (its type's name when it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
