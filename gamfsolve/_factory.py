"""Resolve a ``"package.module:callable"`` string (model factories of the torch adapter and the CLI)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._errors import FusionError

__all__ = ["import_factory"]


def import_factory(spec: Any, what: str = "factory") -> Callable[..., Any]:
    """The callable named by ``spec``; :class:`FusionError` naming ``what`` if it is malformed or missing."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise FusionError(f"{what} must look like 'package.module:callable', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        func = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise FusionError(f"cannot import {what} {spec!r}: {exc}") from exc
    if not callable(func):
        raise FusionError(f"{what} {spec!r} is not callable")
    return func
