"""The embedded database: one nx-27017 process per data dir, shared by every
genjobs server that uses that dir, restarted by whichever of them first finds
it dead, stopped by the last one to leave."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

# The embedded database's entry point: nx-27017 with a quiet, rotated log. A
# pid is trusted as our database only when its command line runs this module.
DATABASE_MODULE = "genjobs.server.runtime.quiet_nx"
# Where free_port looks: above the well-known services, below the kernel's
# range for outgoing connections on common systems (32768-60999 on Linux).
LISTEN_PORTS = range(20000, 32768)
FREE_PORT_TRIES = 200
UNPRIVILEGED = 1024
_GIVEN: set[int] = set()  # the ports free_port returned in this process: two callers never share one
START_TIMEOUT_SECONDS = 30.0
ANSWER_TIMEOUT_SECONDS = 5.0  # one ping's wait
# An instance that is alive but has answered nothing for this long is hung, and
# is killed so that a new one can start. Busy (a long command, a loaded box) is
# not hung: one missed ping never kills a database other servers use.
HUNG_SECONDS = 60.0


class EmbeddedError(RuntimeError):
    """The embedded database could not be started."""


class EmbeddedMongo:
    """Starts or joins the nx-27017 server for a data dir.

    Files under the data dir: `mongo/` (the SQLite databases), `nx-27017.pid`
    and `mongo.port` (the running instance), `nx-27017.daemon.pid` (nx-27017's
    own, which it refuses to start over while the pid in it exists),
    `users/<pid>` (one per genjobs server using it), `embedded.lock`
    (serialises start, join, restart and stop).

    Every start happens with the exclusive lock held and only after finding no
    live instance under it, so two servers never both start one: when the
    database dies, every server using it calls `revive()`; the first to get the
    lock starts a new one on the same port and data, the others then find it.

    A pid in these files is trusted only when /proc shows that process is
    nx-27017 serving this data dir: after a crash the pid may be a zombie, or
    belong to some unrelated process by now.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.mongo_dir = self.data_dir / "mongo"
        self.pid_file = self.data_dir / "nx-27017.pid"
        self.port_file = self.data_dir / "mongo.port"
        self.daemon_pid_file = self.data_dir / "nx-27017.daemon.pid"
        self.users_dir = self.data_dir / "users"
        self.uri = ""
        self.port = 0

    def acquire(self) -> str:
        """Return the URI of the running instance, starting one if none is alive."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.users_dir.mkdir(exist_ok=True)
        with self._locked():
            pid, port = self._running()
            if pid is None:
                self._clear_stale_files()
                pid, port = self._start()
            else:
                log.info("joining the embedded database (pid %d) on port %d", pid, port)
            (self.users_dir / str(os.getpid())).touch()
        self.port = port
        self.uri = _uri(port)
        return self.uri

    def dead(self) -> bool:
        """Whether no instance lives for this data dir (read from /proc; no lock, no query)."""
        return self._instance() is None

    def revive(self, hung: bool = False) -> str:
        """After the database stopped answering: the URI of the instance to use.

        A dead instance is replaced, on the same port and data, by whichever
        server gets the lock first; `hung` (it has answered nothing for
        HUNG_SECONDS) also replaces a live one that still does not answer.
        The URI differs from `uri` only when the port moved (it could not be
        had again): the caller's connections then point nowhere.
        Raises EmbeddedError when no instance could be started."""
        with self._locked():
            found = self._instance()
            if found is not None:
                pid, port = found
                if not hung or _answers(port, timeout=ANSWER_TIMEOUT_SECONDS):
                    return _uri(port)  # alive: busy, frozen, or already restarted by another server
                log.warning(
                    "the embedded database (pid %d) has answered nothing for %.0f s; killing it",
                    pid,
                    HUNG_SECONDS,
                )
                _stop_process(pid, signal.SIGKILL)
            else:
                log.info("the embedded database died; starting it again on port %d", self.port)
            self._clear_stale_files()
            _, port = self._start(self.port)
            return _uri(port)

    def release(self) -> None:
        """Leave the instance; stop it when no other live genjobs server uses it."""
        with self._locked():
            (self.users_dir / str(os.getpid())).unlink(missing_ok=True)
            if self._live_users():
                return
            found = self._instance()
            if found is not None:
                log.info("stopping the embedded database (pid %d)", found[0])
                _stop_process(found[0])
            self._clear_stale_files()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.data_dir / "embedded.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _running(self) -> tuple[int | None, int]:
        """The nx-27017 serving this data dir, if one answers: (pid, port).

        One that is ours but does not answer is waited for (it may be busy)
        for up to HUNG_SECONDS, then killed: a second instance on the same
        files must never start beside it."""
        found = self._instance()
        if found is None:
            return None, 0
        pid, port = found
        deadline = time.monotonic() + HUNG_SECONDS
        warned = False
        while not _answers(port, timeout=ANSWER_TIMEOUT_SECONDS):
            if not _alive(pid):
                return None, 0
            if time.monotonic() >= deadline:
                log.warning(
                    "the embedded database (pid %d) has answered nothing for %.0f s; killing it",
                    pid,
                    HUNG_SECONDS,
                )
                _stop_process(pid, signal.SIGKILL)
                return None, 0
            if not warned:
                log.warning("the embedded database (pid %d) does not answer yet; waiting for it", pid)
                warned = True
        if _read_int(self.port_file) != port or _read_int(self.pid_file) != pid:
            self.pid_file.write_text(str(pid))
            self.port_file.write_text(str(port))
        return pid, port

    def _instance(self) -> tuple[int, int] | None:
        """(pid, port) of the live nx-27017 serving this data dir, from its pid files and /proc."""
        for pid in {p for p in (_read_int(self.pid_file), _read_int(self.daemon_pid_file)) if p}:
            port = self._instance_port(pid)
            if port is not None:
                return pid, port
        return None

    def _instance_port(self, pid: int) -> int | None:
        """The port of `pid` if it is a live nx-27017 serving this data dir."""
        if not _alive(pid):
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return None
        if DATABASE_MODULE not in args or _flag(args, "--data-dir") != str(self.mongo_dir):
            return None
        port = _flag(args, "--port")
        return int(port) if port and port.isdigit() else None

    def _clear_stale_files(self) -> None:
        # nx-27017's own pid file too: it refuses to start while that pid exists at all.
        for path in (self.pid_file, self.port_file, self.daemon_pid_file):
            path.unlink(missing_ok=True)

    def _live_users(self) -> list[int]:
        live = []
        for entry in self.users_dir.iterdir():
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if _alive(pid):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return live

    def _start(self, port: int = 0) -> tuple[int, int]:
        """Start an instance on `port` (0: a free one); (pid, port) once it answers."""
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            DATABASE_MODULE,
            "--data-dir",
            str(self.mongo_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--pid-file",
            str(self.daemon_pid_file),
            "--log-file",
            str(self.data_dir / "nx-27017.log"),
        ]
        log_file = open(self.data_dir / "nx-27017.out", "ab")  # noqa: SIM115 - child keeps it
        # Its own session: a Ctrl-C to one genjobs server must not kill the
        # database that other servers on this data dir still use.
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers(port, timeout=0.5):
            if process.poll() is not None:
                raise EmbeddedError(
                    f"nx-27017 exited with {process.returncode}; see {self.data_dir}/nx-27017.out"
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise EmbeddedError("nx-27017 did not answer within 30 s")
            time.sleep(0.05)
        self.pid_file.write_text(str(process.pid))
        self.port_file.write_text(str(port))
        log.info("started the embedded database (pid %d) on port %d", process.pid, port)
        return process.pid, port


def _uri(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, chosen below
    the range the kernel gives outgoing connections: a port from that range can
    be taken by some client's connect before its listener binds it."""
    below = min(_ephemeral_low(), LISTEN_PORTS.stop)
    # A kernel whose outgoing range starts low leaves the ports below it; one
    # that takes them all (from 1024) leaves only its own choice (port 0).
    start = LISTEN_PORTS.start if below > LISTEN_PORTS.start else UNPRIVILEGED
    for _ in range(FREE_PORT_TRIES):
        port = random.randrange(start, below) if below > start else 0
        if port in _GIVEN:  # handed out here already, perhaps not bound yet
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken: try another
                continue
            found = int(sock.getsockname()[1])
        _GIVEN.add(found)
        return found
    raise OSError(f"no free port found in {FREE_PORT_TRIES} tries")


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's own
    default where /proc does not say)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _flag(args: list[str], name: str) -> str | None:
    """The value after `name` in a command line."""
    return args[args.index(name) + 1] if name in args[:-1] else None


def _answers(port: int, timeout: float) -> bool:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        "127.0.0.1",
        port,
        directConnection=True,
        serverSelectionTimeoutMS=int(timeout * 1000),
        connectTimeoutMS=int(timeout * 1000),
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _stop_process(pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
