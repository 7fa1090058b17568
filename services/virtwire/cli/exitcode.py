"""The exit codes of `virtwire`, and the one table from error types to them.

A closed stdout (``virtwire status | head -1``) ends a command as SIGPIPE ends
a coreutils one, without a traceback and with 128 + SIGPIPE (141, what a shell
shows for a command SIGPIPE killed); Ctrl-C ends it with 128 + SIGINT (130),
also without a traceback. ``serve`` and a foreground ``up`` whose LAN is up
take SIGINT as SIGTERM: they stop their service and exit 0.
"""

from __future__ import annotations

import signal

from virtwire.errors import ConfigError, NotFoundError, VirtwireError

EXIT_OK = 0
#: The command failed (a service refused, a LAN is unhealthy, a ping got no reply).
EXIT_ERROR = 1
#: The caller's mistake: a bad argument, file or name (argparse's own code too).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

#: Error type -> (exit code when raised here, when a server answered with it);
#: the most derived type listed wins. A name a server does not know is the
#: caller's mistake; a LAN that is not running here is not.
EXIT_CODE_OF: dict[type[VirtwireError], tuple[int, int]] = {
    VirtwireError: (EXIT_ERROR, EXIT_ERROR),
    ConfigError: (EXIT_USAGE, EXIT_USAGE),  # and OutOfRangeError, FrameError
    NotFoundError: (EXIT_ERROR, EXIT_USAGE),
}


def from_server(exc: VirtwireError) -> bool:
    """``exc`` is a status a server answered with (``rpc.status.error_from_rpc``)."""
    return getattr(exc, "status", None) is not None


def exit_code_for(exc: VirtwireError) -> int:
    for cls in type(exc).__mro__:
        codes = EXIT_CODE_OF.get(cls)
        if codes is not None:
            return codes[from_server(exc)]
    return EXIT_ERROR
