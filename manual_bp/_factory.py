"""Model factories named on the command line: ``package.module:function`` or ``path/to/file.py:function``.

``manual-bp check --model SPEC`` and ``manual-bp train --model.factory SPEC`` (and
``ManualBPModule(factory=SPEC)``) resolve ``SPEC`` here, with the same syntax and the same error
messages; each error names the option it came from and what was expected.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["FactoryError", "call_factory", "describe", "load_factory"]


class FactoryError(ValueError):
    """A factory that does not resolve (bad syntax, no such module, file or attribute, not callable),
    that raises, or that returns something unexpected."""


def load_factory(spec: str, option: str = "--model", returning: str = "(model, inputs)") -> Callable[[], Any]:
    """Import ``module:attr`` or ``file.py:attr`` and return the attribute.

    Args:
        spec: ``"package.module:function"`` (the current directory is importable, as with
            ``python -m``) or ``"path/to/file.py:function"``; ``function`` may be dotted
            (``Class.method``).
        option: the option ``spec`` came from, the first word of every error message.
        returning: what the factory should return, for the message when ``spec`` is not callable.

    Raises:
        FactoryError: naming what was expected and what came.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise FactoryError(
            f"{option} expects 'package.module:factory' or 'file.py:factory', got {spec!r} (no ':')"
        )
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise FactoryError(f"{option} expects 'package.module:factory' or 'file.py:factory', got {spec!r}")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FactoryError(f"{option}: no such file {target!r}")
        name = "_manual_bp_factory_" + os.path.splitext(os.path.basename(target))[0]
        loader_spec = importlib.util.spec_from_file_location(name, target)
        if loader_spec is None or loader_spec.loader is None:
            raise FactoryError(f"{option}: cannot load {target!r} as a Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:
            raise FactoryError(
                f"{option}: importing {target!r} failed: {type(error).__name__}: {error}"
            ) from error
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as 'python -m' would: modules in the current directory import
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            raise FactoryError(f"{option}: cannot import module {target!r}: {error}") from error
        except Exception as error:
            raise FactoryError(
                f"{option}: importing {target!r} failed: {type(error).__name__}: {error}"
            ) from error
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"{option}: module {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(
            f"{option}: {spec!r} is a {type(obj).__name__}, expected a function returning {returning}"
        )
    return obj


def call_factory(spec: str, option: str = "--model", returning: str = "(model, inputs)") -> Any:
    """Resolve ``spec`` with :func:`load_factory`, call it without arguments and return its result;
    an exception inside the factory becomes a :class:`FactoryError` that names it."""
    factory = load_factory(spec, option, returning)
    try:
        return factory()
    except Exception as error:
        raise FactoryError(f"{option}: {spec}() raised {type(error).__name__}: {error}") from error


def describe(obj: Any) -> str:
    """``"a Tensor"``, ``"a tuple of 2 items"``: what came, for error messages."""
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    return f"a {type(obj).__name__}"
