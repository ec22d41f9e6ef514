"""Leases: files created exclusively whose owner keeps them alive by touching them.

The catalog needs mutual exclusion (a model's lock) and ownership of a version number while
a push or a training pass runs (a claim), on filesystems that offer only an atomic
create-exclusive and rename. A :class:`Lease` is a file created with
:meth:`FileSystem.create_exclusive`, holding its owner's random token; a thread of the
owning process touches it every third of the lease's duration, so a file whose mtime is
older than the duration belongs to a dead (or stalled) owner and may be taken over. Before
acting on what it owns the owner calls :meth:`Lease.check`, which fails once its own renewal
lapsed or the file is no longer its own.

The guarantee holds while no owner stalls for longer than the duration (a suspended
process, a clock jump): set it with ``$MODELSHARD_LEASE_SECONDS`` (default 60). HDFS keeps
modification times in whole seconds: a duration under about 3 s is not sound there.

>>> lease = Lease.create(LocalFileSystem(), "/tmp/cat/models/m/.lock", duration=60.0)  # doctest: +SKIP
>>> with lease:                                                        # doctest: +SKIP
...     lease.check()   # still ours: act
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from modelshard import safejson
from modelshard.errors import ModelShardError, NotFoundError, StorageError, UsageError
from modelshard.fs import FileInfo, FileSystem

ENV = "MODELSHARD_LEASE_SECONDS"
DEFAULT_DURATION = 60.0


def default_duration() -> float:
    """``$MODELSHARD_LEASE_SECONDS``, else 60 seconds."""
    text = os.environ.get(ENV)
    try:
        duration = float(text) if text else DEFAULT_DURATION
    except ValueError:
        duration = -1.0
    if not duration > 0:
        raise UsageError(f"${ENV}={text!r}: give the lease duration in seconds, e.g. 60")
    return duration


def expired(info: FileInfo, duration: float) -> bool:
    """Whether a lease file was last renewed more than ``duration`` seconds ago."""
    return time.time() - info.mtime > duration


def owner_of(fs: FileSystem, path: str) -> dict:
    """What a lease file says about its owner (``token``, ``pid``, ``host``), or ``{}``."""
    try:
        doc = safejson.loads(fs.read_bytes(path), where=fs.uri(path))
    except ModelShardError:
        return {}
    return doc if isinstance(doc, dict) else {}


class Lease:
    """A lease file owned by this process; a context manager that renews it in a thread and
    deletes it at exit. Create one with :meth:`create`."""

    def __init__(self, fs: FileSystem, path: str, token: str, *, duration: float) -> None:
        self.fs, self.path, self.token, self.duration = fs, path, token, duration
        self._renewed = time.monotonic()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def create(cls, fs: FileSystem, path: str, *, duration: float) -> Lease:
        """Take the lease at ``path``; AlreadyExistsError if someone holds it."""
        token = uuid.uuid4().hex
        doc = {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        fs.create_exclusive(path, json.dumps(doc).encode())
        return cls(fs, path, token, duration=duration)

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                        name=f"lease {self.path}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.duration / 3):
            self.renew()

    def renew(self) -> None:
        """Touch the lease file; note the lease as lost if it is gone or someone else's."""
        if self._lost:
            return
        try:
            self.fs.touch(self.path)
        except NotFoundError:
            pass  # the owner check below records the loss
        except ModelShardError:
            return  # a passing storage error: the next renewal tries again, check() watches the age
        if self._owned():
            self._renewed = time.monotonic()

    def _owned(self) -> bool:
        """Whether the file still holds our token; records the loss if not."""
        if not self._lost and owner_of(self.fs, self.path).get("token") != self.token:
            self._lost = "its file was removed or taken over, as an expired lease is"
        return not self._lost

    def check(self) -> None:
        """Raise StorageError unless the lease is still ours (its file says so) and fresh
        enough to act on."""
        age = time.monotonic() - self._renewed
        if not self._owned() or age > self.duration:
            why = self._lost or f"it was last renewed {age:.0f} s ago, over its {self.duration:.0f} s"
            raise StorageError(f"lease {self.fs.uri(self.path)} lost: {why}; nothing was "
                               f"changed under it, retry (and raise ${ENV} if the process stalls)")

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._owned():
            # A lease file that cannot be deleted expires: failing here would report a
            # committed push as failed.
            with contextlib.suppress(ModelShardError):
                self.fs.delete(self.path)
