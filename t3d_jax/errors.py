"""The one base class of bad-input errors.

Every error caused by the user's files, rows or config keys derives from ``InputError``;
the CLI prints such an error as one line (no traceback) and exits with status 2. Anything
else is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input: the message names the file, row or config key."""


class Interrupted(Exception):
  """A run stopped on a signal after saving its state; the CLI prints the message as one
  line and exits with ``exit_code`` (128 + the signal number, as a shell reports it)."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
