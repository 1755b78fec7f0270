"""User-facing errors.

Every problem a user can cause (a misspelt model name, a missing dataset, an unreadable image)
raises an :class:`IncaError` whose message names the problem *and* the fix. The CLI prints these
messages without a stack trace; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


class IncaError(Exception):
    """An error caused by input, configuration or environment, with a message that says the fix."""


class DivergedError(IncaError):
    """Every member of a training run went non-finite (its learning rate is too high)."""


class UnknownNameError(IncaError, KeyError):
    """A name (backbone, tap, dataset, adapter kind...) that is not one of the valid choices."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        msg = f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid) or '(none)'}"
        super().__init__(msg + (f". {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


def warn(message: str) -> None:
    """Tell the user of a merely poor input (a tiny validation split, a class missing from it):
    one line on stderr, ``inca: warning: ...``; the work goes on."""
    if int(os.environ.get("RANK", "0")) > 0:
        return  # under torchrun, rank 0 tells the user once
    print(f"inca: warning: {message}", file=sys.stderr)
