"""Errors that describe a user's mistake.

Everything raised for bad input derives from :class:`CopycatchError`; the CLI prints
such errors as one line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class CopycatchError(Exception):
    """A problem the user can fix (bad input, missing file, exhausted budget)."""


class InvalidArgument(CopycatchError, ValueError):
    """An argument has a value that cannot work; the message names the value."""


class UnknownName(InvalidArgument, KeyError):
    """A registry was asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DataNotFound(CopycatchError):
    """A data set's files are not where we looked."""


class CorruptFile(CopycatchError):
    """A model, key or results file is damaged, truncated, tampered with or not ours."""


class BudgetExceeded(CopycatchError):
    """An oracle was asked for more queries than its hard budget allows."""


class SuspectError(CopycatchError):
    """A suspect model or API answered in a way we cannot use (NaN, wrong shape, refusal)."""


class SuspectUnresponsive(SuspectError):
    """A suspect API gave no answer within the deadline: over every attempt, retry wait and endpoint since its last
    answer (or since it was opened)."""


class AccuracyCostExceeded(CopycatchError):
    """The watermark costs more test accuracy than the limit allows (``max_cost``).

    The work is finished and kept: ``embedding`` holds the result (the victim and its key, already written to any
    output paths given), so lowering the scheme's strength or accepting the cost never means embedding again blind.
    """

    def __init__(self, message: str, embedding: object):
        super().__init__(message)
        self.embedding = embedding
