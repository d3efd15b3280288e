"""Every error safeedit raises on purpose, under one base class.

Two branches, one exit code each (``safeedit.cli.main`` catches exactly :class:`SafeEditError`):

* :class:`UserError` (exit 2) -- the input is wrong and the user can fix it: a malformed record,
  an unknown option, a missing file, an index out of range, a run folder made with other settings.
* any other :class:`SafeEditError` (exit 1) -- the input was fine but the work failed: a NaN loss,
  a restore that did not reproduce the weights, an endpoint that kept failing.

Anything else (a ``KeyError`` deep in a library, an ``AssertionError``) is a bug and keeps its
traceback. The concrete classes also derive from the matching built-in exception, so library
callers who catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


class SafeEditError(Exception):
    """Base of every error safeedit raises on purpose."""

    exit_code = 1


class UserError(SafeEditError):
    """Bad input the user can fix; the message names what and where."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An unknown or ill-typed option, a config file that does not fit the command."""


class DataError(UserError, ValueError):
    """A data file, record or field that cannot be used (the message names file, record, field)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, folder or model that the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output path that would be overwritten."""


class SelectionError(UserError, IndexError):
    """An instance index or range outside the data."""


class RunFailedError(SafeEditError, RuntimeError):
    """The input was valid but the work failed (NaN loss, inexact restore, a failing endpoint)."""


__all__ = [
    "ConfigError",
    "DataError",
    "InputNotFoundError",
    "OutputExistsError",
    "RunFailedError",
    "SafeEditError",
    "SelectionError",
    "UserError",
]
