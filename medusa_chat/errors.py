"""The base class of every error a user can cause: a bad option, a missing model, a broken file.

Its message is one line that says what to do; the CLI prints it and exits 1, the app shows it as it is.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An expected failure the user can fix (see the message)."""
