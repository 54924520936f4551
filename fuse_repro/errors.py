"""The project's error class: anything a user can cause and fix.

``run.py`` catches ``FuseError`` at the entry point and prints its message as one line,
``error: <what is wrong, the bad value, what to do>``, then exits with status 2. Every other
exception is a bug and keeps its traceback. Module errors (``AdapterError``, ``ObjectiveError``,
``DatasetError``, ``ModelUnavailableError``, ...) subclass ``FuseError``; the ones that were
``ValueError`` before stay ``ValueError`` too, so ``except ValueError`` callers keep working.
Full tracebacks for user errors: ``debug=true`` or ``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class FuseError(Exception):
    """A problem the user can fix; its message is one line naming the bad value and the fix."""


class ConfigError(FuseError, ValueError):
    """A config value that cannot work (checked before any model loads)."""


class ObjectiveError(FuseError, ValueError):
    """An objective that cannot be built or evaluated for this input (raised by the objectives
    and by the search's LM side; here so neither imports the other for it)."""


class ContextLengthError(ObjectiveError):
    """A text longer than a model's context, found when it is framed for the model (a caption
    that grew past a secondary model's context mid-search: that item fails alone, into the run
    folder's ``errors.jsonl``, as an unreadable image does)."""


CONTEXT_FIX = ("shorten the text (in a caption search: a shorter search.prefix or fewer "
               "search.steps)")


def context_error(model: str, n_tokens: int, what: str, limit: int,
                  text: str) -> ContextLengthError:
    """The ``ContextLengthError`` of a text of ``n_tokens`` (specials included) framed for a
    model whose context (``what``, e.g. ``max_length``) holds ``limit``."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return ContextLengthError(f"{model}: {n_tokens} tokens exceed {what} {limit} for the text "
                              f"{shown!r}; {CONTEXT_FIX}")


def use_one_of(key: str, allowed: Iterable[Any], value: Any = None, in_list: bool = False) -> str:
    """The fix of a line refusing ``value`` for ``key`` whose allowed values it lists:
    ``use one of them, e.g. key=<the allowed value closest to value, else the first>``
    (``key=[...]`` for an entry of a list)."""
    options = [str(a) for a in allowed]
    pick = (closest(value, options) if value is not None else None) or (
        options[0] if options else "<value>")
    return f"use one of them, e.g. {key}={f'[{pick}]' if in_list else pick}"


def closest(value: Any, options: Iterable[Any]) -> str | None:
    """The option most like ``value`` (``difflib``'s close match), None when none is close."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return close[0] if close else None


def one_line(err: BaseException) -> str:
    """The message of ``err`` folded onto one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
