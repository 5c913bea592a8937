"""The one base class of bad-input errors.

Every error caused by the user's files, rows or config keys derives from ``InputError``;
the CLI prints such an error as one line (no traceback) and exits with status 2. Anything
else is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input: the message names the file, row or config key."""
