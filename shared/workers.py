"""Several worker processes of one service on one port: the parent that supervises them.

The parent imports little (uvicorn, prometheus_client's directory handling, settings): it
never builds the app, which only its workers import and run, so it stays a small process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from socket import socket
from typing import Final

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from shared.errors import ConfigError
from shared.metrics import MULTIPROCESS_DIR
from shared.settings import HttpSettings

log = logging.getLogger(__name__)

# uvicorn's exit code of a worker whose start-up failed (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE: Final = 3
# How long a worker may take to answer the parent's health ping (uvicorn's default is 5 s,
# which a worker importing the app on busy cores can miss, and be killed for).
HEALTHCHECK_SECONDS: Final = 30.0
# A worker that died is replaced after FIRST_RETRY_SECONDS, doubled for each replacement in
# that slot that died before serving MIN_SERVING_SECONDS, up to MAX_RETRY_SECONDS.
FIRST_RETRY_SECONDS: Final = 0.5
MAX_RETRY_SECONDS: Final = 30.0
MIN_SERVING_SECONDS: Final = 60.0
_METRICS_PREFIX: Final = "cxloop-metrics-"
# Held (flock) by the parent that owns a metrics directory for as long as it runs.
_LOCK_NAME: Final = "owner.lock"
# A metrics directory without its lock file is left alone this long (its parent may be
# creating the lock), then taken for one a parent left before it locked it.
_UNLOCKED_GRACE_SECONDS: Final = 60.0


class Supervisor(Multiprocess):
    """uvicorn's supervisor, changed in how it replaces workers.

    A worker of the first start that fails to start (exit 3) stops the service (exit 3): the
    app or its settings are broken. A later worker that dies (killed, crashed, its lifespan
    failed during a database outage, or it missed its health ping) is replaced alone, after
    a delay that doubles while its replacements keep dying before they have served
    MIN_SERVING_SECONDS; the other workers keep serving. SIGHUP, SIGTTIN and SIGTTOU (which
    put new workers in slots) forget what was pending for those slots.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.first_start_failed = False
        self._first: set[Process] = set()
        self._deaths: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}
        self._serving_since: dict[Process, float] = {}

    def init_processes(self) -> None:
        super().init_processes()
        self._first = set(self.processes)

    def keep_subprocess_alive(self) -> None:
        for idx, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if idx in self._retry_at:
                if time.monotonic() >= self._retry_at[idx]:
                    if self.signal_queue:
                        return  # a SIGTERM may be among them: handled first
                    del self._retry_at[idx]
                    self._replace(idx)
                continue
            started = self._ping(process)
            if started is not None:
                if started:
                    self._first.discard(process)
                    since = self._serving_since.setdefault(process, time.monotonic())
                    if time.monotonic() - since >= MIN_SERVING_SECONDS:
                        self._deaths.pop(idx, None)
                continue
            process.kill()  # hung or dead
            process.join()
            if process in self._first and process.exitcode == STARTUP_FAILURE:
                log.error("worker %s failed to start; stopping every worker", process.pid)
                self.first_start_failed = True
                self.should_exit.set()
                return
            self._forget(process)
            deaths = self._deaths[idx] = self._deaths.get(idx, 0) + 1
            delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (deaths - 1))
            log.warning(
                "worker %s exited (code %s); replacing it in %.1f s",
                process.pid,
                process.exitcode,
                delay,
            )
            self._retry_at[idx] = time.monotonic() + delay

    def handle_hup(self) -> None:
        before = list(self.processes)
        super().handle_hup()
        for idx, process in enumerate(self.processes):
            if idx < len(before) and process is not before[idx]:
                self._forget_slot(idx, before[idx])

    def handle_ttin(self) -> None:
        super().handle_ttin()
        idx = len(self.processes) - 1
        self._forget_slot(idx, None)

    def handle_ttou(self) -> None:
        last = self.processes[-1] if self.processes else None
        super().handle_ttou()
        if last is not None and (not self.processes or self.processes[-1] is not last):
            self._forget_slot(len(self.processes), last)

    def _forget_slot(self, idx: int, process: Process | None) -> None:
        """A slot got a new worker (or was removed): what was pending for it no longer holds."""
        self._retry_at.pop(idx, None)
        self._deaths.pop(idx, None)
        if process is not None:
            self._forget(process)

    def _forget(self, process: Process) -> None:
        self._first.discard(process)
        self._serving_since.pop(process, None)

    def _ping(self, process: Process) -> bool | None:
        """Return whether ``process`` has started serving, or None if it is gone or did not
        answer within the health-check timeout. Unlike uvicorn's ping, a worker that exits
        while it is asked is noticed at once (the parent holds both ends of the pipe, so
        its exit does not end the wait), and a signal to the parent ends the wait too; the
        answer that then comes late is read and dropped before the next ping."""
        deadline = time.monotonic() + self.config.timeout_worker_healthcheck
        conn = process.parent_conn
        try:
            while conn.poll():
                conn.recv()  # the answer to a ping a signal interrupted
            conn.send(b"ping")
            while not conn.poll(0.1):
                if not process.process.is_alive() or time.monotonic() > deadline:
                    return None
                if self.signal_queue:
                    return False  # handled first; this worker is asked again afterwards
            started: bool = conn.recv()
        except (OSError, EOFError, pickle.UnpicklingError):
            return None
        return started

    def _replace(self, idx: int) -> None:
        old = self.processes[idx]
        if old.process.is_alive():  # never leave a worker running unsupervised
            old.terminate()
            old.join()
        self._forget(old)
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[idx] = process


def serve_workers(factory: str, http: HttpSettings, workers: int) -> int:
    """Run ``workers`` processes of the app built by ``factory`` (``module:function``, called
    in each worker) on one port; return the exit code (3: the first start failed).

    The port is bound once, here, and every worker accepts on it. Metrics go to a directory of this
    run, removed when it ends (and, if it was killed, at the next start), so ``/metrics`` on
    any worker sums them all. See :class:`Supervisor` for how workers are replaced. SIGTERM
    or SIGINT stops every worker gracefully (each drains its requests and stops its
    producer) before this returns.
    """
    with metrics_directory() as directory:
        remove_stale_metrics_dirs()  # ours is locked by now
        # Read by prometheus_client when each (spawned) worker imports it.
        os.environ[MULTIPROCESS_DIR] = str(directory)
        try:
            config = uvicorn.Config(
                factory,
                factory=True,
                workers=workers,
                host=http.host,
                port=http.port,
                log_config=None,
                access_log=False,
                proxy_headers=False,
                timeout_worker_healthcheck=int(HEALTHCHECK_SECONDS),
            )
            supervisor = Supervisor(config, sockets=[config.bind_socket()])
            supervisor.run()
        finally:
            os.environ.pop(MULTIPROCESS_DIR, None)
    return STARTUP_FAILURE if supervisor.first_start_failed else 0


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """Create the workers' metrics directory, hold its lock while the block runs (so no
    other parent, in this PID namespace or another sharing the directory, takes it for
    stale), then remove it.

    Raises ConfigError if no directory can be created there (a read-only filesystem).
    """
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-"))
    except OSError as exc:
        where = tempfile.tempdir or "TMPDIR, /tmp, /var/tmp or the working directory"
        raise ConfigError(
            f"the collector's workers need a writable directory for their metrics and cannot "
            f"create one in {where} ({exc.strerror or exc}): set TMPDIR to a writable "
            f"directory (for example an emptyDir volume mounted there)"
        ) from None
    try:
        # Locked before it takes its name, so a cleaner never finds it unlocked.
        pending = path / f"{_LOCK_NAME}.new"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pending.rename(path / _LOCK_NAME)
            yield path
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_metrics_dirs() -> None:
    """Remove the metrics directories that parents of ours left when killed: directories
    owned by this user whose lock no live parent holds."""
    uid = os.getuid()
    now = time.time()
    for path in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue
        try:
            fd = os.open(path / _LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if now - info.st_mtime >= _UNLOCKED_GRACE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live parent holds it
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
