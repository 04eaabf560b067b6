"""The one exception type for mistakes in what the user gave us."""


class UserError(Exception):
    """Bad input from the user (unknown preset, missing file, malformed data row, ...).

    The message must say what was wrong and where (file, line, field) and what was expected. The CLI prints it
    without a traceback and exits with status 2; library callers can catch it like any exception.
    """
