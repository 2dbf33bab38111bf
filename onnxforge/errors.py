"""The exit-code contract: 0 ok, 1 a check failed, 2 the user's input is wrong, 3 a bug."""

from __future__ import annotations

from typing import Any


class OnnxforgeError(Exception):
    exit_code = 3


class UserError(OnnxforgeError):
    """Bad input: the message names the problem and the fix, on one line."""

    exit_code = 2


class CheckFailed(OnnxforgeError):
    """A check did not hold (numerical mismatch, budget exceeded, checker error in our own artifact)."""

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


def one_line(text: str) -> str:
    return " ".join(str(text).split())
