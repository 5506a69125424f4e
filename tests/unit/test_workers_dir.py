"""The workers' metrics directory: held while its parent runs, removed when it is not."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.workers import metrics_directory, remove_stale_metrics_dirs


def test_a_live_parents_directory_is_kept_whatever_its_pid() -> None:
    # Another container sharing /tmp: its parent is PID 1 too, and unknown here.
    with metrics_directory() as live:
        remove_stale_metrics_dirs()
        assert live.exists()
        renamed = live.with_name("cxloop-metrics-1-1-other")
        live.rename(renamed)
        try:
            remove_stale_metrics_dirs()
            assert renamed.exists()
        finally:
            renamed.rename(live)
    assert not live.exists()


def test_the_directory_of_a_killed_parent_is_removed() -> None:
    with metrics_directory() as live:
        # What a killed parent leaves: its lock file, which nobody holds any more.
        left = Path(tempfile.mkdtemp(prefix="cxloop-metrics-1-"))
        (left / "owner.lock").write_bytes(b"")
        (left / "counter_7.db").write_bytes(b"")
        try:
            remove_stale_metrics_dirs()
            assert not left.exists()
            assert live.exists()
        finally:
            if left.exists():
                for path in left.iterdir():
                    path.unlink()
                left.rmdir()


def test_a_symlink_named_like_a_directory_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "kept"
    target.mkdir()
    (target / "owner.lock").write_bytes(b"")
    link = Path(tempfile.gettempdir()) / f"cxloop-metrics-link-{os.getpid()}"
    link.symlink_to(target)
    try:
        remove_stale_metrics_dirs()
        assert (target / "owner.lock").exists()
    finally:
        link.unlink()


def test_no_writable_temporary_directory_is_a_config_error_naming_tmpdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="TMPDIR"), metrics_directory():
        pass
