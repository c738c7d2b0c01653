"""Components named by import path: Hydra's ``_target_`` convention, checked before any work.

A run is assembled from seven components. Each is a config group (``fedsweep/configs/<section>/``)
whose node names a class or factory by ``_target_`` and holds its keyword arguments; the
shipped ones are just the default targets, and a user's own class or function plugs in the
same way (``model._target_=mypkg.models.Wide``):

=============  =======================================================  ==========================
section        the target is called as                                   fedsweep passes
=============  =======================================================  ==========================
``data``       ``target(**args) -> DataBundle`` (train and test tensors,  ``seed``
               input shape, class count)
``partition``  ``target(train, **args) -> Partition``                    ``num_classes``, ``seed``
``model``      ``target(**args) -> nn.Module`` (torch seeded by fedsweep)  ``input_shape``, ``num_classes``
``loss``       ``target(outputs, y, **args) -> per-example losses (N,)``  (``_partial_: true``)
``method``     ``target(**args) -> Method`` (``init``/``round``)          —
``solver``     ``target(**args) -> Solver`` (the server's argmin,         —
               ``fedsweep.federation.solvers``)
``runtime``    ``target(**args) -> Runtime`` (how clients are reached)    ``device``, ``label``
=============  =======================================================  ==========================

A key whose value is itself a node with a ``_target_`` is a component inside a component (the
``steps`` solver's ``optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 0.05}``),
checked the same way under its dotted name and built first (Hydra's recursive instantiate).

"fedsweep passes" values go only to targets whose signature takes them. A component's
signature is its schema: every key must be one of its keyword parameters, every required
one must be set, and each value must fit the parameter's annotation (``int``, ``float``,
``bool``, ``str``, ``Literal``, ``X | None``, lists of those); ranges are the component's
own business, checked when it is built (raising :class:`ConfigError` or ``ValueError``).
Every mistake is one line naming ``section.key`` and the value.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError
from fedsweep.core.targets import check_target

SECTIONS = ("data", "partition", "model", "loss", "method", "solver", "runtime")
SUPPLIED = {  # what fedsweep passes each section's target (when its signature takes it)
    "data": ("seed",),
    "partition": ("train", "num_classes", "seed"),
    "model": ("input_shape", "num_classes"),
    "loss": ("outputs", "y"),
    "method": (),
    "solver": (),
    "runtime": ("device", "label"),
}
NESTED_SUPPLIED = ("params",)  # a nested partial component's call arguments (a torch optimizer's parameters)
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def locate(path: str, section: str = "component") -> Callable[..., Any]:
    """The class or function at import path ``path`` (``package.module.Name``, as Hydra's
    ``_target_``); one line if it is outside the allowed packages (checked before any import,
    ``fedsweep.core.targets``) or cannot be imported."""
    check_target(f"{section}._target_", path)
    return _import(path, section)


@lru_cache(maxsize=None)
def _import(path: str, section: str) -> Callable[..., Any]:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        module_name = ".".join(parts[:cut])
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(f"{section}._target_={shown(path)} cannot be imported: {err}") from None
        except Exception as err:  # the module's own import failed
            raise ConfigError(f"{section}._target_={shown(path)} cannot be imported: {type(err).__name__}: {_first_line(err)}") from None
        try:
            for attr in parts[cut:]:
                target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(f"{section}._target_={shown(path)} cannot be imported: {module_name} has no {'.'.join(parts[cut:])}") from None
        break
    else:
        raise ConfigError(f"{section}._target_={shown(path)} cannot be imported: no module named {shown(parts[0])}")
    if not callable(target):
        raise ConfigError(f"{section}._target_={shown(path)} is not a class or a function")
    return target


def arguments(node: Mapping[str, Any]) -> dict[str, Any]:
    """A component node's keyword arguments (everything but Hydra's ``_underscore_`` keys)."""
    return {k: v for k, v in node.items() if k not in HYDRA_KEYS}


def check(section: str, node: Any) -> Callable[..., Any]:
    """Check ``node`` against its target's signature (see the module docstring); returns the target."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ConfigError(f"{section} must name its class or factory with {section}._target_")
    target = locate(node["_target_"], section)
    params, hints, var_kw = _signature(target)
    supplied = SUPPLIED.get(section, NESTED_SUPPLIED)
    for key, value in arguments(node).items():
        if isinstance(value, Mapping) and "_target_" in value:
            check(f"{section}.{key}", value)
            continue
        if key in supplied:
            raise ConfigError(f"{section}.{key}={shown(value)} is set by fedsweep, not in the config")
        if key not in params and not var_kw:
            known = ", ".join(k for k in params if k not in supplied) or "none"
            raise ConfigError(f"{section}.{key}={shown(value)} is not an argument of {node['_target_']}; known: {known}")
        if key in hints and not fits(value, hints[key]):
            raise ConfigError(f"{section}.{key} must be {_describe(hints[key])}, got {section}.{key}={shown(value)}")
    if not node.get("_partial_", False):
        for key, param in params.items():
            required = param.default is inspect.Parameter.empty
            if required and key not in supplied and key not in node:
                raise ConfigError(f"missing config key {section}.{key} (an argument of {node['_target_']})")
    return target


def build(section: str, node: Mapping[str, Any], *args: Any, **offered: Any) -> Any:
    """Hydra's ``instantiate`` of ``node``, given the ``offered`` values its target takes;
    a component's own complaint (ConfigError, ValueError, TypeError) becomes one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = check(section, node)
    params, _, var_kw = _signature(target)
    given = {k: v for k, v in offered.items() if var_kw or k in params}
    if node.get("_partial_", False):
        # a plain partial: Hydra 1.3.8's re-checks its target policy on every call, which made a
        # per-example loss cost 16.3 against 11.5 ms per FedAvg round (K = 4, digits)
        return functools.partial(target, *args, **arguments(node), **given)
    try:
        return instantiate(dict(node), *args, **given, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, OverflowError)):
            raise ConfigError(f"{section} ({node['_target_']}): {_first_line(cause)}") from None
        raise


def target(section: str, node: Mapping[str, Any]) -> Callable[..., Any]:
    """The class or factory a (checked) node names."""
    return locate(node["_target_"], section)


def label(node: Any) -> str:
    """A short name for a component node: its ``name`` or ``scheme`` if it has one, else the
    target's ``name`` attribute or its own name (``fedsweep.algorithms.VRCS`` → ``vrcs``)."""
    if not isinstance(node, Mapping):
        return str(node)
    if isinstance(node.get("name"), str):
        return node["name"]
    if isinstance(node.get("scheme"), str):  # VRCS's two-group partitions
        return "groups_iid" if node["scheme"] == "iid" else node["scheme"]
    path = str(node.get("_target_", "?"))
    try:
        target = locate(path)
    except ConfigError:
        return path.rsplit(".", 1)[-1]
    name = getattr(target, "name", None)
    return name if isinstance(name, str) else path.rsplit(".", 1)[-1]


def fits(value: Any, hint: Any) -> bool:
    """Whether a config value fits a (simple) annotation; unknown annotations accept anything."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, Sequence) or hint in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = typing.get_args(hint)[:1]
        return not item or item[0] is Ellipsis or all(fits(v, item[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a class, a callable, a Mapping...: the component checks it


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "null"
    if origin is not None:
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0])}" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


@lru_cache(maxsize=None)
def _signature(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Keyword parameters, their evaluated annotations, and whether ``**kwargs`` is taken."""
    init = target.__init__ if isinstance(target, type) else target
    sig = inspect.signature(target)
    params = {
        k: p
        for k, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # annotations that do not evaluate here: check names only
        hints = {}
    return params, {k: v for k, v in hints.items() if k in params}, var_kw


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
