"""Which import paths a config's ``_target_`` may name: fedsweep's own components, torch's
optimizers and the plug-in packages the user names. Checked on the text of the path, before
anything is imported, so a config or a sweep file cannot call ``os.makedirs`` or ``builtins.open``.

    check_target("model._target_", "mypkg.models.Wide", plugins=("mypkg",))   # fine
    check_target("model._target_", "os.makedirs")
    # ConfigError: model._target_='os.makedirs' is outside the allowed packages (fedsweep, torch.optim);
    #   name a plug-in package in plugins: [...] (or its fedsweep.plugins entry point)

A plug-in package is named by the config's top-level ``plugins: [mypkg, ...]`` (a sweep file's
``plugins:`` list sets it for every trial) or exposed by an installed distribution under the
entry-point group ``fedsweep.plugins`` (``[project.entry-points."fedsweep.plugins"] mypkg = "mypkg"``).
Python's standard library and fedsweep's own dependencies cannot be named as plug-ins.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from fedsweep.core.checks import shown
from fedsweep.core.errors import ConfigError

BUILT_IN = ("fedsweep", "torch.optim")  # torch.optim covers torch.optim.lr_scheduler
ENTRY_POINTS = "fedsweep.plugins"
NOT_PLUGINS = frozenset(sys.stdlib_module_names) | {
    "torch", "torchvision", "numpy", "ray", "hydra", "omegaconf", "yaml", "pandas", "scipy", "sklearn",
    "tensorboard", "tqdm", "optuna", "matplotlib", "setuptools", "pip", "pkg_resources",
}  # fmt: skip
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_plugins: tuple[str, ...] = ()  # the running config's plugins (use_plugins)


def check_plugins(packages: Any, key: str = "plugins") -> tuple[str, ...]:
    """``packages`` as a tuple of package names, or a one-line ConfigError."""
    if packages is None:
        return ()
    if not isinstance(packages, (list, tuple)):
        raise ConfigError(f"{key} must be a list of package names, got {key}={shown(packages)}")
    for name in packages:
        if not (isinstance(name, str) and _DOTTED.fullmatch(name)):
            raise ConfigError(f"{key} must list package names like mypkg, got {key}={shown(packages)}")
        if name.split(".")[0] in NOT_PLUGINS or name in BUILT_IN:
            raise ConfigError(f"{key} names {shown(name)}, which cannot be a plug-in (the standard library, fedsweep "
                              "and its dependencies are not plug-ins)")  # fmt: skip
    return tuple(packages)


def use_plugins(packages: Any) -> None:
    """Make ``packages`` (a config's ``plugins``) the plug-ins this process's targets may name."""
    global _plugins
    _plugins = check_plugins(packages)


def allowed_packages() -> tuple[str, ...]:
    return (*BUILT_IN, *_plugins, *entry_point_plugins())


@lru_cache(maxsize=1)
def entry_point_plugins() -> tuple[str, ...]:
    """The modules installed distributions expose under the ``fedsweep.plugins`` entry points."""
    from importlib.metadata import entry_points

    found = []
    for point in entry_points(group=ENTRY_POINTS):
        module = point.value.split(":")[0].strip()
        if _DOTTED.fullmatch(module) and module.split(".")[0] not in NOT_PLUGINS:
            found.append(module)
    return tuple(found)


def check_target(key: str, path: Any, plugins: Iterable[str] = ()) -> None:
    """A one-line ConfigError unless import path ``path`` is inside an allowed package (fedsweep,
    torch.optim, ``plugins``, the running config's plug-ins or an entry point's)."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", path):
        raise ConfigError(f"{key} must be an import path like mypkg.module.Name, got {key}={shown(path)}")
    allowed = (*allowed_packages(), *plugins)
    if not any(path == package or path.startswith(package + ".") for package in allowed):
        raise ConfigError(
            f"{key}={shown(path)} is outside the allowed packages ({', '.join(dict.fromkeys(allowed))}); "
            "name a plug-in package in plugins: [...] (or its fedsweep.plugins entry point)"
        )


def check_all_targets(node: Any, prefix: str = "") -> None:
    """:func:`check_target` for every ``_target_`` anywhere in ``node`` (nested mappings and lists)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{prefix}{key}"
            if key == "_target_":
                check_target(where, value)
            else:
                check_all_targets(value, f"{where}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_all_targets(value, f"{prefix.rstrip('.')}[{i}].")
