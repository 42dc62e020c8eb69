"""One writer per workdir: `WorkdirLock`, held by a training run for its whole life, so that two
trainers never interleave their metrics and checkpoints (`run_io.WorkdirLock` is the same class).
flock on ``<workdir>/.lock``, else an exclusive ``.lock.owner`` file; docs/internals.md.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"  # The fallback's lock, where flock is unavailable.
# flock errors that mean "not supported here" (not "held by someone else").
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_LOCKING = "cannot take the workdir lock: "


class WorkdirBusyError(RuntimeError):
    """Another process is writing the workdir; the message names it (pid, host, since when)."""


class WorkdirLock:
    """Exclusive right to write `workdir`, as a context manager (or `acquire` / `release`).

    Args:
        workdir: an existing run directory (see `run_io.prepare_workdir`).
        primary: whether this process takes the lock; pass False on processes other than 0 of
            a multi-host run (then this object does nothing).

    Raises (on acquire):
        WorkdirBusyError: another live process holds it.
    """

    def __init__(self, workdir: str | os.PathLike, *, primary: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.primary = primary
        self._fd: int | None = None  # The flock'ed file, while held.
        self._owner: pathlib.Path | None = None  # The fallback's owner file, while held.

    def acquire(self) -> None:
        """Takes the lock, or raises WorkdirBusyError naming the holder."""
        if not self.primary or self.held:
            return
        path = self.workdir / LOCK_FILE
        with naming(path, _LOCKING):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise self._busy(_await_holder(path)) from None
            if e.errno not in _NO_FLOCK:
                raise
            self._acquire_owner_file()
            return
        self._fd = fd
        try:
            with naming(path, _LOCKING):
                os.ftruncate(fd, 0)
                os.pwrite(fd, _holder_record().encode(), 0)
        except OSError:
            self.release()
            raise

    def release(self) -> None:
        """Gives the lock back (also done by the OS if the process dies)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # No holder named any more.
            os.close(fd)  # Closing the only descriptor releases the flock.
        if self._owner is not None:
            owner, self._owner = self._owner, None
            with contextlib.suppress(FileNotFoundError):
                owner.unlink()

    @property
    def held(self) -> bool:
        return self._fd is not None or self._owner is not None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _acquire_owner_file(self) -> None:
        """The fallback: create `.lock.owner` exclusively, replacing it once if it is stale."""
        owner = self.workdir / OWNER_FILE
        for _ in range(2):
            try:
                with naming(owner, _LOCKING):
                    fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _read_holder(owner)
                if not _is_stale(holder):
                    raise self._busy(holder, stale_hint=owner) from None
                with contextlib.suppress(FileNotFoundError):
                    owner.unlink()  # Its process died on this host: take over.
                continue
            self._owner = owner
            try:
                with naming(owner, _LOCKING), os.fdopen(fd, "w") as f:
                    f.write(_holder_record())
            except OSError:
                self.release()
                raise
            return
        raise self._busy(_read_holder(owner), stale_hint=owner)

    def _busy(self, holder: dict, stale_hint: pathlib.Path | None = None) -> WorkdirBusyError:
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}"
            if holder
            else "another process"
        )
        message = f"{self.workdir} is being written by {who}; wait for it or use another --workdir"
        if stale_hint is not None:
            message += f" (if that process is gone, delete {stale_hint})"
        return WorkdirBusyError(message)


@contextlib.contextmanager
def naming(path: str | os.PathLike, doing: str = ""):
    """Re-raises an OSError as one naming `path` (a write or a flush names no file), its cause
    after `doing`: one line that says where the disk is full (also used by `run_io`)."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno is None or (e.filename and not doing):
            raise
        raise type(e)(e.errno, f"{doing}{e.strerror or e}", str(path)) from None


def _holder_record() -> str:
    """This process as the lock's holder: pid, host and start time, one JSON line."""
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}) + "\n"


def _read_holder(path: pathlib.Path) -> dict:
    """The holder a lock file names, or {} if it is empty or unreadable (being written)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _await_holder(path: pathlib.Path, timeout: float = 2.0) -> dict:
    """The holder of a held flock, waiting up to `timeout` s for it to write its record: the
    winner of a race names itself just after taking the flock, so the file may still be empty."""
    deadline = time.monotonic() + timeout
    while not (holder := _read_holder(path)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return holder


def _is_stale(holder: dict) -> bool:
    """Whether an owner file names a process of this host that no longer runs.

    An unreadable file is treated as held (its writer may be between create and write).
    """
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)  # Signal 0: only checks that the process exists.
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # It exists, under another user.
    return False
