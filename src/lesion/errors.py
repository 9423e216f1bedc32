"""The one exception type a user's mistake raises (ARCHITECTURE.md, Habits)."""


class LesionError(Exception):
    """A problem the user can fix: bad path, wrong shape, NaN weights, unknown name, impossible budget.

    The message says what went wrong and what to do. The CLI prints it on one line to stderr and exits
    with status 2, without a traceback.
    """
