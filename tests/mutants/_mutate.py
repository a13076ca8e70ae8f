"""Helpers for the mutant plugins: replace one piece of a function's source and re-define it
in its own module, so that a mutant never edits a file in the working tree."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


def _redefine(obj: Any, old: str, new: str, module: Any) -> Any:
    src = textwrap.dedent(inspect.getsource(obj))
    if old not in src:
        raise RuntimeError(f"mutant out of date: {old!r} is no longer in {obj.__qualname__}")
    ns = dict(vars(module))
    exec(compile(src.replace(old, new, 1), f"<mutant of {obj.__qualname__}>", "exec"), ns)
    return ns[obj.__name__]


def mutate_method(cls: type, name: str, old: str, new: str, module: Any) -> None:
    setattr(cls, name, _redefine(getattr(cls, name), old, new, module))


def mutate_function(module: Any, name: str, old: str, new: str) -> None:
    setattr(module, name, _redefine(getattr(module, name), old, new, module))
