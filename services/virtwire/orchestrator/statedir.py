"""Private directories for the state root, its LAN dirs and the agent's dir.

Everything under the state root is trusted (pids to signal, dirs to remove),
so the root and each directory below it must be this user's alone: created
0700, and refused when it is a symlink, not a directory, owned by another
user, or writable by group or others. A directory of ours that is only
readable by others (say 0755, made by an older virtwire) is tightened to
0700 and used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from virtwire.errors import PermissionDeniedError

MODE = 0o700


def check_private_dir(path: Path, *, create: bool = True) -> bool:
    """Create ``path`` 0700 (its parents as needed) or check an existing one.

    False when it does not exist and ``create`` is off; PermissionDeniedError
    when it may not be used.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, MODE)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if create:
            raise PermissionDeniedError(f"state directory {path} vanished while "
                                        "being created") from None
        return False
    if stat.S_ISLNK(st.st_mode):
        raise PermissionDeniedError(f"state directory {path} is a symlink: not used "
                                    "(remove it, or set VIRTWIRE_STATE_DIR)")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDeniedError(f"state directory {path} is not a directory: not used")
    if st.st_uid != os.geteuid():
        raise PermissionDeniedError(f"state directory {path} is owned by uid {st.st_uid}, "
                                    f"not by this user (uid {os.geteuid()}): not used")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionDeniedError(f"state directory {path} is writable by group or "
                                    f"others (mode {stat.S_IMODE(st.st_mode):04o}): not "
                                    "used; 'chmod 700' it if its contents are yours")
    if stat.S_IMODE(st.st_mode) != MODE:
        os.chmod(path, MODE, follow_symlinks=False)
    return True


def check_component(name: str) -> str:
    """A single path component (no '/', not '.', '..' or empty)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise PermissionDeniedError(f"{name[:64]!r} is not a directory name")
    return name


def private_dir(root: Path, *parts: str, create: bool = True) -> Path | None:
    """``root/part/...``: the root and every directory below it checked (or made)
    private; None when one is missing and ``create`` is off."""
    path = root
    if not check_private_dir(path, create=create):
        return None
    for part in parts:
        path = path / check_component(part)
        if not check_private_dir(path, create=create):
            return None
    return path
