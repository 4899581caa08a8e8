"""Errors caused by the user's input: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

MAX_LINE = 400  # a library's message can run to pages (a graph dump); the start says what failed


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""


def one_line(error: BaseException) -> str:
    """A library's (or the OS's) message folded into one line and cut to a readable length."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
