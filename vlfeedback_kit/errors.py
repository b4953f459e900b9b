"""Errors the user can act on."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad input, bad option); the CLI prints it without a traceback."""
