"""User errors (bad options, a missing or mismatched clean split) and how they are shown.

From the command line (``fairseq-train --user-dir ...``) such an error prints its message on
one line and exits 1 instead of ending a long traceback from inside fairseq: importing the
plugin installs :func:`excepthook`. Code that calls the plugin still gets the exception, and
``GGLM_TRACEBACK=1`` brings the traceback back.
"""

import os
import sys
from types import TracebackType
from typing import Optional, Type


class GGLMUserError(ValueError):
    """A mistake in the user's options or data, not a bug: the message says what to fix.
    A ValueError, so callers that caught ValueError before still do."""


def excepthook(
    kind: Type[BaseException], error: BaseException, traceback: Optional[TracebackType]
) -> None:
    """``sys.excepthook``: one line for a :class:`GGLMUserError`, the previous hook otherwise.
    The interpreter exits 1 after an uncaught exception either way."""
    if issubclass(kind, GGLMUserError) and not os.environ.get("GGLM_TRACEBACK"):
        print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {error}", file=sys.stderr)
    else:
        _previous_hook(kind, error, traceback)


_previous_hook = sys.excepthook


def install_excepthook() -> None:
    """Make :func:`excepthook` the interpreter's (once, however often the plugin is imported)."""
    global _previous_hook
    if sys.excepthook is not excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = excepthook
