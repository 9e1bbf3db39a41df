"""The one exception type the CLI turns into a one-line message (no traceback)."""


class UserError(Exception):
    """Bad input from the user: an unknown name, an impossible value, a corrupt file.

    The message names the problem and, where there is one, what to do instead. The CLI prints
    it as a single line and exits with status 2.
    """
