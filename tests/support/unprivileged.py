"""Run a check as a user without privileges, also when the suite runs as root.

Root reads any file and opens any port, so a test of what an ordinary user is
refused would never run in CI (which runs as root). :func:`unprivileged` calls
the function directly when not root; as root it forks a child that drops to
``nobody`` (no supplementary groups, no capabilities) and sends the result
back pickled. The child inherits the loaded modules: it reads nothing of the
virtualenv, only what the function touches, which must be reachable by
``nobody`` (see :func:`open_dir`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pwd
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def unprivileged(fn: Callable[[], T]) -> T:
    """``fn()`` as ``nobody`` when root, else in this process; its (picklable) result."""
    if os.geteuid() != 0:
        return fn()
    user = pwd.getpwnam("nobody")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            with os.fdopen(wfd, "wb") as out:
                pickle.dump(fn(), out)
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as inp:
        data = inp.read()
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    assert code == 0, f"the unprivileged child exited {code} (its traceback is on stderr)"
    result: T = pickle.loads(data)
    return result


@contextlib.contextmanager
def open_dir() -> Iterator[Path]:
    """A fresh directory that ``nobody`` can enter (pytest's tmp_path sits in a
    directory only its owner may enter); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="vw-unpriv-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path
