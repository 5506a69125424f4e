"""The metrics directories a killed parent left behind are removed at the next start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.workers import _started, remove_stale_metrics_dirs


def test_directories_of_gone_parents_are_removed_and_live_ones_kept() -> None:
    pid = os.getpid()
    live = Path(tempfile.mkdtemp(prefix=f"cxloop-metrics-{pid}-{_started(pid)}-"))
    # The same pid, started at another time: a parent that is gone, its pid reused.
    reused = Path(tempfile.mkdtemp(prefix=f"cxloop-metrics-{pid}-1-"))
    (reused / "counter_1.db").write_bytes(b"")
    try:
        remove_stale_metrics_dirs()
        assert live.exists()
        assert not reused.exists()
    finally:
        for path in (live, reused):
            if path.exists():
                path.rmdir()
