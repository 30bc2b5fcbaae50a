"""Runs nx-27017 (the embedded database) with a quiet, bounded log.

nx-27017 logs every command at INFO (a line a second from the health check's
ping, about 15 KB a minute, twice: to its log file and to stdout) and never
rotates. It has no log-level flag, so this entry point takes its command line
unchanged, keeps warnings and errors only, and writes them to --log-file
through a rotating handler: at most (1 + BACKUPS) x MAX_BYTES on disk.

    python -m genjobs.server.runtime.quiet_nx --data-dir D --port P --pid-file F --log-file L
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

MAX_BYTES = 1_000_000
BACKUPS = 2
FORMAT = "%(asctime)s - %(name)s - %(levelname)s - [%(process)d] - %(message)s"


def log_handler(path: str, max_bytes: int = MAX_BYTES) -> logging.Handler:
    """The rotating handler the database logs to."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=BACKUPS)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def main() -> None:
    """Run nx-27017's own main with its log quiet and bounded."""
    argv = sys.argv[1:]
    log_file = ""
    if "--log-file" in argv:
        at = argv.index("--log-file") + 1
        # nx-27017's own handler (unbounded) writes nowhere; ours rotates.
        log_file, argv[at] = argv[at], os.devnull
    root = logging.getLogger()
    # A handler on the root first makes nx-27017's logging.basicConfig a no-op
    # (no copy of every line on stderr).
    root.addHandler(log_handler(log_file) if log_file else logging.StreamHandler())
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    sys.argv = [sys.argv[0], *argv]
    from nx_27017 import nx_27017

    nx_27017.main()


if __name__ == "__main__":
    main()
