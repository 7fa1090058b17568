"""Files the user names on the command line: failing to open one is the caller's mistake.

``with user_file(PATH, "write"): out = open(PATH, "wb")`` turns an OSError
in its block into a ConfigError (exit 2) naming the file and why, ``cannot
write PATH: No such file or directory``, instead of a traceback. Only opens
go in the block: a closed stdout (BrokenPipeError) is not the file's fault.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from virtwire.errors import ConfigError


@contextlib.contextmanager
def user_file(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """OSError in the block -> ConfigError("cannot DOING PATH: WHY"), PATH the
    file the error names (``path`` or one inside it)."""
    try:
        yield
    except OSError as exc:
        where = os.fsdecode(exc.filename if exc.filename is not None else path)
        raise ConfigError(f"cannot {doing} {where}: {exc.strerror or exc}") from None
