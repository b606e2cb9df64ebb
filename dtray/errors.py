"""One exception type for user-facing failures: the CLI prints its message, no traceback."""


class DtrayError(Exception):
    """A problem with the user's input (file, episode, field, argument), not a bug."""
