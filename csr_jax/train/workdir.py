"""The workdir as a single-owner store: an exclusive lock, the config and its history, OS errors.

* `WorkdirLock`: `<workdir>/run.lock`, held with `fcntl.flock` for the whole run. The kernel
  releases the lock when the process dies however it dies (SIGKILL, OOM, power loss of a
  client), so a killed run never leaves a stale lock behind; the file's text (pid, host, start
  time) only serves the message of a refused second run. In a multi-process job process 0 holds
  it and every process learns the outcome, so all of them stop together.
* `record_config`: config.json (what this workdir trains) and config_history.jsonl (every start,
  with the settings a resume changed: learning rate, epochs, dtype, ...).
* `os_error_message`: one line for the OS errors a user can fix (read-only file system, disk
  full, permission, a file where the workdir should be), naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Any, Iterator

import jax
import numpy as np
from etils import epath

from csr_jax.train.errors import WorkdirLockedError, WorkdirWriteError

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


def _is_remote(workdir: str) -> bool:
    return "://" in str(workdir)


def _all_processes_agree(ok: bool) -> bool:
    """True on every process iff `ok` is True on every process (collective)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.asarray([1 if ok else 0], np.int32))
    return bool(np.all(np.asarray(flags)))


class WorkdirLock:
    """An exclusive lock on a local workdir, held from `acquire()` to `release()`.

    Object stores (gs://, s3://) have no advisory locks: there the lock is skipped with a warning,
    and only one job may be launched per workdir (the scheduler's job name is the usual guard).
    """

    def __init__(self, workdir: str):
        self.workdir = str(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises WorkdirLockedError naming the holder (before writing anything)."""
        holder = None
        if jax.process_index() == 0:
            if _is_remote(self.workdir):
                logging.warning(
                    "%s is on an object store, which has no file locks: make sure no other "
                    "run uses this workdir.",
                    self.workdir,
                )
            else:
                holder = self._try_lock()
        if not _all_processes_agree(holder is None):
            if holder is None:
                holder = "another run (seen by process 0)"
            raise WorkdirLockedError(
                f"The workdir {self.workdir} is in use by {holder}; a second run would overwrite its "
                "checkpoints. Wait for it to finish (or stop it: the lock goes with the process), or "
                "use another --workdir."
            )

    def _try_lock(self) -> str | None:
        """None if locked now, else a description of the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.read(fd, 4096).decode(errors="replace").strip()
                info = json.loads(text) if text else {}
            except ValueError:
                info = {}
            finally:
                os.close(fd)
            if not info:
                return "another process (it is still starting)"
            return f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            ),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            # Unlock (the file stays: deleting it would race with a run that opened it meanwhile).
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Config and its history.


def _jsonable(value: Any) -> Any:
    """JSON round trip, so saved and current values compare equal (tuples become lists...)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def read_config(workdir: str) -> dict[str, Any] | None:
    """config.json of the workdir, or None if absent or unreadable (a warning says which)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        logging.warning(
            "%s is not valid JSON (%s); using the config saved with the checkpoints.", path, e
        )
        return None


def record_config(
    workdir: str,
    record: dict[str, Any],
    previous: dict[str, Any] | None,
    resumed_from: int | None,
    identity: tuple[str, ...],
) -> dict[str, Any]:
    """Writes config.json and appends to config_history.jsonl; returns the changed fields.

    `previous` is the config the workdir had (None for a new run). Identity fields have already
    been checked equal; any other field that differs (learning rate, epochs, dtype, cadence...) is
    logged and recorded as `{field: [old, new]}`, so the workdir says how its run was produced.
    """
    current = _jsonable(record)
    changed = {}
    if previous is not None:
        for key in sorted(set(current) | set(previous)):
            if key not in identity and previous.get(key) != current.get(key):
                changed[key] = [previous.get(key), current.get(key)]
    if changed:
        logging.warning(
            "Resuming %s with changed settings: %s",
            workdir,
            ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
        )
    if jax.process_index() == 0 and (previous is None or changed):
        root = epath.Path(workdir)
        (root / CONFIG_FILE).write_text(json.dumps(current, indent=2, sort_keys=True))
        entry = {
            "time": time.time(),
            "resumed_from_step": resumed_from,
            "event": "start" if previous is None else "changed",
            "changed": changed,
        }
        if previous is None:
            entry["config"] = current
        _append_line(root / HISTORY_FILE, json.dumps(entry, sort_keys=True))
    return changed


def _append_line(path: epath.Path, line: str) -> None:
    if _is_remote(str(path)):  # Object stores cannot append: rewrite (the file stays small).
        old = path.read_text() if path.exists() else ""
        path.write_text(old + line + "\n")
    else:
        with open(os.fspath(path), "a", encoding="utf-8") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------------------------
# OS errors.

_FIXES = {
    errno.EROFS: "the file system is read-only: use a writable --workdir",
    errno.ENOSPC: "no space left on the device: free space or use a --workdir on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or use a --workdir on another disk",
    errno.EACCES: "permission denied: make it writable (chmod/chown) or use another --workdir",
    errno.EPERM: "operation not permitted: make it writable (chmod/chown) or use another --workdir",
    errno.ENOTDIR: "a file is in the way of the workdir: remove it or use another --workdir",
    errno.EEXIST: "a file is in the way of the workdir: remove it or use another --workdir",
    errno.EISDIR: "a directory is where a file should be: remove it or use another --workdir",
}


def os_error_message(error: OSError, workdir: str) -> str | None:
    """The one-line message for an OS error under `workdir` a user can fix, else None."""
    if error.errno not in _FIXES:
        return None
    path = error.filename or workdir
    if (
        error.filename
        and not os.path.abspath(str(error.filename)).startswith(os.path.abspath(str(workdir)))
        and not _is_remote(workdir)
    ):
        return None  # Not the workdir's problem (e.g. a dataset file): keep the original error.
    return (
        f"Cannot write to {path} ({error.strerror or error}): {_FIXES[error.errno]}. "
        "Checkpoints already in the workdir are intact; rerun the same command once fixed."
    )


@contextlib.contextmanager
def workdir_errors(workdir: str) -> Iterator[None]:
    """Turns fixable OS errors under `workdir` into WorkdirWriteError (one line, with the fix)."""
    try:
        yield
    except WorkdirWriteError:
        raise
    except OSError as e:
        message = os_error_message(e, workdir)
        if message is None:
            raise
        error = WorkdirWriteError(message)
        error.errno = e.errno
        raise error from e
