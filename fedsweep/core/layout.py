"""Checks on ``Weights`` operands: one dtype and device, the same names and shapes (in order) as
a model or another ``Weights`` (each mismatch a ValueError naming the first differing name or
shape), scalars, shared storage and whether autograd is needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from numbers import Real
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from fedsweep.core.weights import Scalar, Weights


def named_parameters(model: nn.Module) -> tuple[tuple[str, ...], list[nn.Parameter]]:
    named = list(model.named_parameters())
    names, params = tuple(n for n, _ in named), [p for _, p in named]
    validate(names, params)
    return names, params


def validate(names: tuple[str, ...], tensors: Sequence[Tensor]) -> None:
    if not tensors:
        raise ValueError("Weights needs at least one tensor")
    first = tensors[0]
    for name, t in zip(names, tensors):
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise TypeError(f"Weights maps str to Tensor, got {name!r}: {type(t).__name__}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"Weights needs one dtype and device: {names[0]!r} is {first.dtype} on {first.device}, "
                f"{name!r} is {t.dtype} on {t.device}"
            )


def check_compatible(x, y) -> None:
    if (x._names is not y._names or x._shapes is not y._shapes) and (x._names, x._shapes) != (y._names, y._shapes):
        check_layout(x._names, x._shapes, y._names, y._shapes, "other Weights")


def check_layout(names, shapes, other_names, other_shapes, other: str) -> None:
    """Raise a ValueError naming the first differing name or shape, if any."""
    for i, (name, other_name) in enumerate(zip(names, other_names)):
        if name != other_name:
            raise ValueError(f"Weights mismatch at position {i}: {name!r} here, {other_name!r} in the {other}")
        if shapes[i] != other_shapes[i]:
            raise ValueError(
                f"Weights mismatch: {name!r} has shape {tuple(shapes[i])} here, "
                f"{tuple(other_shapes[i])} in the {other}"
            )
    if len(names) != len(other_names):
        longer = names if len(names) > len(other_names) else other_names
        side = "here" if longer is names else f"in the {other}"
        raise ValueError(
            f"Weights mismatch: {len(names)} tensors here, {len(other_names)} in the {other}; "
            f"first extra {longer[min(len(names), len(other_names))]!r} {side}"
        )


def shares_storage(x: Weights, y: Weights) -> bool:
    return x is y or x._tensors[0].untyped_storage().data_ptr() == y._tensors[0].untyped_storage().data_ptr()


def needs_grad(ws: Sequence[Weights], scalar: Scalar | None = None) -> bool:
    if not torch.is_grad_enabled():
        return False
    if isinstance(scalar, Tensor) and scalar.requires_grad:
        return True
    return any(t.requires_grad for w in ws for t in w._tensors)


def chunks(tensors: Sequence[Tensor], size: int) -> list[Tensor]:
    """1-D views of at most ``size`` values covering every tensor, in order."""
    return [c for t in tensors for c in t.reshape(-1).split(size)]


def is_scalar(a: object) -> bool:
    return (isinstance(a, Real) and not isinstance(a, bool)) or (isinstance(a, Tensor) and a.dim() == 0)


def scalar(a: Scalar) -> Scalar:
    if not is_scalar(a):
        raise TypeError(f"expected a Python number or a 0-d tensor, got {type(a).__name__}")
    return a if isinstance(a, Tensor) else float(a)


def write_into(
    out: Weights | None, first: Weights, rest: tuple[Weights, ...], flat_op: Callable, inplace: Callable
) -> Weights:
    """Write op(first, *rest) into ``out`` (a fresh flat Weights if None), without autograd.

    All flat: ``flat_op(first, *rest, out)`` is one kernel. Otherwise ``out ← first``
    then ``inplace(out)`` applies the op with ``rest`` in place (through a temporary
    if ``out`` shares storage with one of ``rest``).
    """
    if out is None:
        out = first._new_flat()
    else:
        check_compatible(first, out)
        out._check_writable()
    with torch.no_grad():
        if out._flat is not None and first._flat is not None and all(r._flat is not None for r in rest):
            flat_op(first._flat, *[r._flat for r in rest], out._flat)
        elif any(shares_storage(out, r) for r in rest):
            out.copy_(inplace(first.clone()))
        else:
            inplace(out if out is first else out.copy_(first))
    return out
