"""The base of errors caused by a user's data or params (not by a bug): stage scripts report
them in one line naming the problem, without a traceback, and exit 1."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input data, params or artifacts; the message says what to fix."""


class DataContractError(UserError):
    """The input breaks a rule that row quarantine cannot fix; the message says which."""
