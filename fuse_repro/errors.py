"""The project's error class: anything a user can cause and fix.

``run.py`` catches ``FuseError`` at the entry point and prints its message as one line,
``error: <what is wrong, the bad value, what to do>``, then exits with status 2. Every other
exception is a bug and keeps its traceback. Module errors (``AdapterError``, ``ObjectiveError``,
``DatasetError``, ``ModelUnavailableError``, ...) subclass ``FuseError``; the ones that were
``ValueError`` before stay ``ValueError`` too, so ``except ValueError`` callers keep working.
Full tracebacks for user errors: ``debug=true`` or ``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class FuseError(Exception):
    """A problem the user can fix; its message is one line naming the bad value and the fix."""


class ConfigError(FuseError, ValueError):
    """A config value that cannot work (checked before any model loads)."""


class ObjectiveError(FuseError, ValueError):
    """An objective that cannot be built or evaluated for this input (raised by the objectives
    and by the search's LM side; here so neither imports the other for it)."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` folded onto one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
