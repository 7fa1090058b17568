"""Process identity: a pid together with its start time.

A pid kept in a state file may belong to another process by the time it is
read (the service exited and the number was reused). So every pid the
orchestrator records comes with the process's start time (field 22 of
``/proc/PID/stat``, clock ticks after boot) and the boot id, and a recorded
pid is only signalled while both still match. QEMU has nothing of the kind:
its ``-pidfile`` is only written, never used to signal.
"""

from __future__ import annotations

import logging
import os
import signal
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

#: Fields of /proc/PID/stat after ``(comm)``: field 3 (state) is index 0.
_STATE, _PGRP, _STARTTIME = 0, 2, 19


@cache
def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``); "" if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    if pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rfind(")") + 1:].split()
    return fields if len(fields) > _STARTTIME else None


def start_time(pid: int) -> int:
    """Process ``pid``'s start time (clock ticks after boot); 0 if there is none."""
    fields = _stat(pid)
    return int(fields[_STARTTIME]) if fields else 0


def same_process(pid: int, started: int, boot: str = "") -> bool:
    """``pid`` is still the process that started at ``started`` (in boot ``boot``).

    An unknown start time (0) never matches: such a pid is not ours to signal.
    A zombie still matches (its number cannot be reused until it is reaped).
    """
    if started <= 0 or (boot and boot != boot_id()):
        return False
    return start_time(pid) == started


def running(pid: int, started: int, boot: str = "") -> bool:
    """Like ``same_process``, but a zombie (exited, not yet reaped) is gone."""
    fields = _stat(pid)
    if fields is None or fields[_STATE] in ("Z", "X"):
        return False
    return same_process(pid, started, boot)


def signal_process(pid: int, started: int, sig: int, *, boot: str = "",
                   group: bool = False, what: str = "") -> bool:
    """Send ``sig`` to ``pid`` (or, with ``group``, to the process group it leads)
    if it is still the recorded process; False, logged, when it is gone.

    A single process is signalled through a pidfd opened before the check, so
    a pid reused between the check and the signal is never hit. A group is
    signalled only while its leader is the recorded process (a live leader, or
    its zombie, keeps the group's number from being reused).
    """
    label = what or f"pid {pid}"
    if group:
        fields = _stat(pid)
        if fields is None or not same_process(pid, started, boot):
            _gone(label, pid, fields is not None)
            return False
        if int(fields[_PGRP]) != pid:
            logger.warning("%s (pid %d) no longer leads its process group: signalling "
                           "the process only", label, pid)
            return signal_process(pid, started, sig, boot=boot, what=what)
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # ProcessLookupError: no such process
        _gone(label, pid, False)
        return False
    try:
        if not same_process(pid, started, boot):
            _gone(label, pid, True)
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        os.close(fd)


def _gone(label: str, pid: int, reused: bool) -> None:
    if reused:
        logger.warning("%s (pid %d) is gone: pid %d is now another process (or its start "
                       "time is unknown); not signalled", label, pid, pid)
    else:
        logger.info("%s (pid %d) is already gone", label, pid)
