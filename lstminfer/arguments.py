"""Strict keyword arguments: an unknown keyword is a ``TypeError`` that names it and the closest valid one.

Python's own message ("got an unexpected keyword argument") suggests nothing, and a function taking
``**options`` would not complain at all: ``load(p, quantise="int8")`` must fail, not run float32.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def keyword_names(fn: Callable) -> frozenset[str]:
    """The names ``fn`` takes by keyword (positional-or-keyword and keyword-only parameters)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, p in inspect.signature(fn).parameters.items()
                     if p.kind in kinds and name != "self")


def did_you_mean(word: str, possibilities: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest of ``possibilities`` to ``word`` (difflib), or ""."""
    import difflib  # here: only an error needs it, not an import of lstminfer

    close = difflib.get_close_matches(str(word), list(possibilities), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_keyword_error(where: str, unknown: str, valid: Iterable[str]) -> TypeError:
    """The TypeError for ``unknown`` given to ``where``: the closest valid name, then all of them."""
    valid = sorted(valid)
    return TypeError(f"{where} got an unexpected keyword argument '{unknown}'{did_you_mean(unknown, valid)} "
                     f"(it takes: {', '.join(valid) or 'no keywords'})")


def check_keywords(where: str, given: Mapping[str, Any], valid: frozenset[str]) -> None:
    """Raise ``unknown_keyword_error`` for the first name of ``given`` not in ``valid``."""
    for name in given:
        if name not in valid:
            raise unknown_keyword_error(where, name, valid)


def strict_keywords(fn: F) -> F:
    """``fn``, checking its keyword arguments first (so the error suggests the closest valid name)."""
    valid = keyword_names(fn)
    where = _display_name(fn)

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs and not valid.issuperset(kwargs):
            check_keywords(where, kwargs, valid)
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _display_name(fn: Callable) -> str:
    owner, _, name = fn.__qualname__.rpartition(".")
    return f"{owner}()" if name == "__init__" else f"{fn.__qualname__}()"


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside lstminfer (the user's line)."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)  # level 2: warn_caller's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
