"""Several worker processes of one service on one port: the parent that supervises them.

The parent imports little (uvicorn, prometheus_client's directory handling, settings): it
never builds the app, which only its workers import and run, so it stays a small process.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from socket import socket
from typing import Final

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from shared.metrics import MULTIPROCESS_DIR
from shared.settings import HttpSettings

log = logging.getLogger(__name__)

# uvicorn's exit code of a worker whose start-up failed (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE: Final = 3
# How long a worker may take to answer the parent's health ping (uvicorn's default is 5 s,
# which a worker importing the app on busy cores can miss, and be killed for).
HEALTHCHECK_SECONDS: Final = 30.0
# A worker that died is replaced after FIRST_RETRY_SECONDS, doubled for each replacement in
# that slot that died before serving, up to MAX_RETRY_SECONDS.
FIRST_RETRY_SECONDS: Final = 0.5
MAX_RETRY_SECONDS: Final = 30.0
_METRICS_PREFIX: Final = "cxloop-metrics-"


class Supervisor(Multiprocess):
    """uvicorn's supervisor, changed in how it replaces workers.

    A worker of the first start that fails to start (exit 3) stops the service (exit 3): the
    app or its settings are broken. A later worker that dies (killed, crashed, its lifespan
    failed during a database outage, or it missed its health ping) is replaced alone, after
    a delay that doubles while its replacements keep dying before they serve; the other
    workers keep serving.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.first_start_failed = False
        self._first: set[int] = set()
        self._deaths: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}

    def init_processes(self) -> None:
        super().init_processes()
        self._first = {id(process) for process in self.processes}

    def keep_subprocess_alive(self) -> None:
        for idx, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if idx in self._retry_at:
                if time.monotonic() >= self._retry_at[idx]:
                    del self._retry_at[idx]
                    self._replace(idx)
                continue
            started = self._ping(process)
            if started is not None:
                if started:
                    self._deaths.pop(idx, None)
                    self._first.discard(id(process))
                continue
            process.kill()  # hung or dead
            process.join()
            if id(process) in self._first and process.exitcode == STARTUP_FAILURE:
                log.error("worker %s failed to start; stopping every worker", process.pid)
                self.first_start_failed = True
                self.should_exit.set()
                return
            self._first.discard(id(process))
            deaths = self._deaths[idx] = self._deaths.get(idx, 0) + 1
            delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (deaths - 1))
            log.warning(
                "worker %s exited (code %s); replacing it in %.1f s",
                process.pid,
                process.exitcode,
                delay,
            )
            self._retry_at[idx] = time.monotonic() + delay

    def _ping(self, process: Process) -> bool | None:
        """Return whether ``process`` has started serving, or None if it is gone or did not
        answer within the health-check timeout. Unlike uvicorn's ping, a worker that exits
        while it is asked is noticed at once (the parent holds both ends of the pipe, so
        its exit does not end the wait), and a signal to the parent ends the wait too."""
        deadline = time.monotonic() + self.config.timeout_worker_healthcheck
        try:
            process.parent_conn.send(b"ping")
            while not process.parent_conn.poll(0.1):
                if not process.process.is_alive() or time.monotonic() > deadline:
                    return None
                if self.signal_queue:
                    return False  # handled first; this worker is asked again afterwards
            started: bool = process.parent_conn.recv()
        except (OSError, EOFError, pickle.UnpicklingError):
            return None
        return started

    def _replace(self, idx: int) -> None:
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
    remove_stale_metrics_dirs()
    pid = os.getpid()
    directory = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{pid}-{_started(pid)}-")
    # Read by prometheus_client when each (spawned) worker imports it.
    os.environ[MULTIPROCESS_DIR] = directory
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
        shutil.rmtree(directory, ignore_errors=True)
    return STARTUP_FAILURE if supervisor.first_start_failed else 0


def remove_stale_metrics_dirs() -> None:
    """Remove the metrics directories that parents of ours left when killed: owned by this
    user, named after a parent process that is gone (or whose pid now names another)."""
    uid = os.getuid()
    for path in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*-*-*"):
        pid, _, rest = path.name.removeprefix(_METRICS_PREFIX).partition("-")
        started = rest.partition("-")[0]
        try:
            if path.stat().st_uid != uid or not (pid.isdigit() and started.isdigit()):
                continue
        except OSError:
            continue
        if _started(int(pid)) != started:
            shutil.rmtree(path, ignore_errors=True)


def _started(pid: int) -> str:
    """Return when process ``pid`` started (clock ticks after boot), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
