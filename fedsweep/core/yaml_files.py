"""Reading a YAML file a user hands fedsweep (a sweep file, a ``--config-dir`` option) without
trusting it: UTF-8 text of bounded size, no Python tags (``yaml.safe_load``) and no aliases.

An alias (``*name``) repeats the node its anchor (``&name``) marks, and nested aliases multiply:
a 1 KB file of them expands to billions of nodes (the "billion laughs"). fedsweep's files never
need them, so they are refused in one line naming the file and the line, before anything expands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedsweep.core.errors import ConfigError

MAX_BYTES = 1_000_000  # a sweep file or a config option is a few KB


class _NoAliases(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias instead of expanding it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor, line)
        self.anchor, self.line = anchor, line


def read_text(path: str | Path) -> str:
    """The text of ``path``: a one-line ConfigError if it is missing, too large or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path} is {size} bytes, more than the {MAX_BYTES} a YAML file here may have")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def load(text: str, path: str | Path) -> Any:
    """``yaml.safe_load(text)`` without aliases: one-line ConfigError naming ``path`` and the line."""
    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader
    except _AliasFound as found:
        raise ConfigError(f"{path}: YAML aliases are not allowed (*{found.anchor} at line {found.line}); "
                          "write the value out") from None  # fmt: skip
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def check_file(path: str | Path) -> None:
    """A one-line ConfigError unless ``path`` is UTF-8 YAML of bounded size without aliases."""
    load(read_text(path), path)
