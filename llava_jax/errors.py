"""Errors a user can fix: a damaged checkpoint, a bad config, data or model file, a missing path.

Their messages name the file, field or record and say what is wrong. Programs run their main
through `one_line(main)`, so such an error prints as one `error: ...` line on stderr and exits 1,
never as a traceback (a traceback stays for real bugs).
"""

import functools
import sys
from typing import Callable


class UserError(Exception):
  """Base of the errors whose message says what to fix; programs print it without a traceback."""


# Built-in errors that our code raises with messages naming the path (checked at the callers).
_PATH_ERRORS = (FileNotFoundError, FileExistsError)


def one_line(main: Callable) -> Callable:
  """`main` for absl's app.run, with user errors printed as one line (exit status 1)."""
  @functools.wraps(main)
  def run(argv):
    try:
      return main(argv)
    except (UserError, *_PATH_ERRORS) as e:
      sys.exit(f"error: {e}")
  return run
