"""How the workers' supervisor replaces workers, driven step by step on real processes."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.supervisors.multiprocess import SIGNALS

from shared.workers import FIRST_RETRY_SECONDS, Supervisor

pytestmark = pytest.mark.timeout(120)


def _supervisor(workers: int, healthcheck: int = 10) -> Supervisor:
    config = uvicorn.Config(
        "tests.unit.tiny_asgi:create",
        factory=True,
        workers=workers,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        timeout_worker_healthcheck=healthcheck,
    )
    return Supervisor(config, sockets=[config.bind_socket()])


@pytest.fixture
def supervised() -> Iterator[list[Supervisor]]:
    """Supervisors a test makes; their workers stopped and the signal handlers restored."""
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    made: list[Supervisor] = []
    try:
        yield made
    finally:
        for supervisor in made:
            for process in supervisor.processes:
                if process.process.is_alive():
                    os.kill(process.process.pid or 0, signal.SIGCONT)
                process.kill()
                process.join()
            for socket in supervisor.sockets:
                socket.close()
        for child in multiprocessing.active_children():
            child.kill()
            child.join()
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


def start(supervised: list[Supervisor], workers: int, healthcheck: int = 10) -> Supervisor:
    supervisor = _supervisor(workers, healthcheck)
    supervised.append(supervisor)
    supervisor.init_processes()
    for process in supervisor.processes:
        assert process.wait_until_ready(60)
    return supervisor


def until_started(supervisor: Supervisor, idx: int) -> None:
    """Until the supervisor itself has seen the worker in slot ``idx`` serving."""
    while not supervisor.processes[idx].is_ready(timeout=5):
        supervisor.keep_subprocess_alive()
        time.sleep(0.1)
    supervisor.keep_subprocess_alive()


def kill(supervisor: Supervisor, idx: int) -> None:
    process = supervisor.processes[idx].process
    process.kill()
    process.join()


def unsupervised(supervisor: Supervisor) -> set[int | None]:
    """Worker processes alive that the supervisor does not hold."""
    held = {process.pid for process in supervisor.processes}
    return {child.pid for child in multiprocessing.active_children()} - held


def delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(d) for d in re.findall(r"replacing it in ([0-9.]+) s", caplog.text)]


class TestSlotsGivenNewWorkers:
    def test_a_retry_pending_at_sighup_does_not_orphan_the_new_worker(
        self, supervised: list[Supervisor]
    ) -> None:
        supervisor = start(supervised, workers=2)
        kill(supervisor, 1)
        supervisor.keep_subprocess_alive()  # slot 1 now waits for its retry
        supervisor.handle_hup()  # which puts a healthy worker in every slot
        time.sleep(FIRST_RETRY_SECONDS + 0.1)
        supervisor.keep_subprocess_alive()
        assert unsupervised(supervisor) == set()
        assert all(process.process.is_alive() for process in supervisor.processes)

    def test_a_retry_pending_at_sigttou_does_not_replace_a_sigttin_worker(
        self, supervised: list[Supervisor]
    ) -> None:
        supervisor = start(supervised, workers=2)
        kill(supervisor, 1)
        supervisor.keep_subprocess_alive()
        supervisor.handle_ttou()
        supervisor.handle_ttin()
        time.sleep(FIRST_RETRY_SECONDS + 0.1)
        supervisor.keep_subprocess_alive()
        assert unsupervised(supervisor) == set()
        assert len(supervisor.processes) == 2


class TestBackoff:
    def test_workers_dying_soon_after_starting_wait_longer_each_time(
        self, supervised: list[Supervisor], caplog: pytest.LogCaptureFixture
    ) -> None:
        # As when each new worker dies on the first request, which its client retries.
        supervisor = start(supervised, workers=1)
        for _ in range(2):
            until_started(supervisor, 0)
            kill(supervisor, 0)
            supervisor.keep_subprocess_alive()
            while supervisor.processes[0].process.exitcode is not None:
                time.sleep(0.1)
                supervisor.keep_subprocess_alive()
        assert delays(caplog) == [FIRST_RETRY_SECONDS, 2 * FIRST_RETRY_SECONDS]

    def test_no_replacement_starts_while_a_sigterm_waits(
        self, supervised: list[Supervisor]
    ) -> None:
        supervisor = start(supervised, workers=2)
        kill(supervisor, 1)
        supervisor.keep_subprocess_alive()
        time.sleep(FIRST_RETRY_SECONDS + 0.1)
        supervisor.signal_queue.append(signal.SIGTERM)
        supervisor.keep_subprocess_alive()
        assert len(multiprocessing.active_children()) == 1
        supervisor.handle_signals()
        assert supervisor.should_exit.is_set()
