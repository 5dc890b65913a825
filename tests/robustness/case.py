"""A bad-input case and how its outcome is classified.

clear      an expected error: ValueError, TypeError, FileNotFoundError, or a RuntimeError (our TORCH_CHECKs and
           torch's schema checks raise those), whose message names the argument (one of ``names``, as a word) and
           holds every phrase of ``also``
accepted   a valid input, accepted, with a correct result (its check returned True)
unclear    any other exception (another type, or a message not naming the argument), or a valid input refused
silent     a bad input accepted, or a valid input giving a wrong result
crash      the child process died from a signal, or exited without reporting
hang       the child did not finish within the timeout
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

CLEAR_TYPES = (ValueError, TypeError, FileNotFoundError, RuntimeError)
PASSING = ("clear", "accepted")


@dataclass
class Case:
    name: str  # surface/target/how/what, e.g. "op/fused_linear/direct/eps=nan"
    run: Callable[[Any], Any]  # run(ctx) -> True when a valid input gave the right result
    expect: str = "error"  # "error" (a bad input) or "ok" (a valid one)
    names: tuple = ()  # the argument: any of these words must appear in the error message
    also: tuple = ()  # phrases the message must hold as well
    devices: tuple = ("cpu", "cuda")

    @property
    def surface(self) -> str:
        return self.name.split("/")[0]


def names_argument(message: str, names: tuple) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in names)


def classify(case: Case, error: BaseException | None, result: Any) -> tuple[str, str]:
    """(class, detail) of one outcome."""
    if case.expect == "ok":
        if error is not None:
            return "unclear", f"valid input refused: {type(error).__name__}: {error}"
        return ("accepted", "") if result is True else ("silent", f"wrong result ({result!r:.80})")
    if error is None:
        return "silent", "bad input accepted"
    message = str(error)
    if type(error) is NotImplementedError or not isinstance(error, CLEAR_TYPES):
        return "unclear", f"{type(error).__name__}: {message}"
    if not names_argument(message, case.names) or not all(p in message for p in case.also):
        wanted = f"{case.names} + {case.also}" if case.also else f"{case.names}"
        return "unclear", f"{type(error).__name__} not naming {wanted}: {message}"
    return "clear", f"{type(error).__name__}: {message}"
