"""Errors caused by the user's input: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""
