"""One training run per run folder: the ``run.lock`` file, and leftovers of killed saves.

Two ``otm train`` runs writing one ``--out`` interleave their ``log.jsonl`` and overwrite each other's
``last.pt``, and both exit 0. So a run holds its folder: ``run.lock`` (the owner's pid, host and
start time) is created exclusively (``O_CREAT | O_EXCL``: of two runs started at once exactly one
creates it) before anything in the folder changes, and removed when the run ends, however it ends.
A lock whose pid no longer runs on this host is stale (a ``kill -9``): it is taken over, with a note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "run.lock"


class RunFolderBusy(ValueError):
    """Another live run holds the folder (a ValueError: the command line prints it as one line)."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _owner(text: str) -> dict:
    """The lock's fields; {} for an unreadable (e.g. half-written) lock."""
    try:
        d = json.loads(text)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def _busy(folder: Path, owner: dict) -> RunFolderBusy:
    return RunFolderBusy(
        f"{folder} is in use by another otm train run (pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
        f"started {owner.get('started', '?')}); wait for it, stop it, or choose another --out "
        f"(if that run is gone, delete {folder / LOCK_NAME})")


def _try_create(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text`` only if no file is there; False if one is.

    The text is written to a file of our own first and hard-linked into place (atomic, and it fails if
    ``lock`` exists), so another run never reads a lock that is created but not yet written: it would
    have to refuse without naming its owner. Where hard links are not supported, ``O_CREAT | O_EXCL``.
    """
    tmp = lock.with_name(f"{lock.name}.new{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(lock: Path, stale_text: str) -> bool:
    """Remove the stale lock ``lock`` if it still holds ``stale_text``; False if another run got there first.

    Moved aside under a name of our own first, so that of two runs taking over at once only one removes
    the stale lock, and a fresh lock written by the other is put back, never deleted.
    """
    aside = lock.with_name(f"{lock.name}.stale{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:  # the other run moved it: try to create ours
        return True
    if aside.read_text() == stale_text:
        aside.unlink()
        return True
    try:  # we moved another run's fresh lock: put it back (unless a third run already made one)
        os.link(aside, lock)
    except FileExistsError:
        pass
    aside.unlink()
    return False


@contextmanager
def hold_run_folder(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process; :class:`RunFolderBusy` if a live run holds it.

    Removes the lock on exit (also on exceptions), and the folder too if this run created it and left
    it empty (a run refused before it wrote anything leaves no trace).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: --out names an existing file; pass a folder for the run")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps(me)
    for _ in range(3):  # a takeover that loses a race to another run tries once more
        if _try_create(lock, text):
            break
        try:
            stale_text = lock.read_text()
        except FileNotFoundError:  # its owner just left
            continue
        owner = _owner(stale_text)
        if not owner:  # being written this instant, or damaged: refuse rather than guess
            raise _busy(folder, owner)
        if owner.get("host") != me["host"] or _pid_alive(int(owner.get("pid", 0))):
            raise _busy(folder, owner)
        if _take_over(lock, stale_text):
            print(f"otm: {lock}: taking over the lock of pid {owner.get('pid')} (started {owner.get('started')}), "
                  "which no longer runs", file=sys.stderr)
    else:
        raise _busy(folder, _owner(lock.read_text()) if lock.exists() else {})
    try:
        yield folder
    finally:
        try:
            if lock.read_text() == text:  # ours still (never remove another run's lock)
                lock.unlink()
        except FileNotFoundError:
            pass
        if created:
            try:
                folder.rmdir()  # only succeeds if empty
            except OSError:
                pass


def remove_stale_temporaries(folder: str | Path, name: str = "last.pt") -> list[Path]:
    """Delete ``NAME.tmpPID`` files that a killed save left behind (their writer ``PID`` no longer runs).

    ``atomic_save`` writes ``NAME.tmpPID`` and renames it; a ``kill -9`` mid-write leaves it for good.
    A file whose pid still runs on this host (a save in progress right now) is left alone.
    """
    removed = []
    for p in Path(folder).glob(f"{name}.tmp*"):
        suffix = p.name[len(name) + len(".tmp"):]
        if suffix.isdigit() and _pid_alive(int(suffix)):  # a save in progress (ours, or a run without a lock)
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
