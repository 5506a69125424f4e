"""The cxloop command as an operator meets it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main


class TestSchemas:
    def test_writes_one_json_schema_per_event(self, tmp_path: Path) -> None:
        assert main(["schemas", "--out", str(tmp_path)]) == 0
        written = sorted(p.name for p in tmp_path.iterdir())
        assert written == [
            "CustomerErased.v1.schema.json",
            "ResponseSubmitted.v1.schema.json",
            "TouchpointEvent.v1.schema.json",
        ]
        schema = json.loads((tmp_path / "ResponseSubmitted.v1.schema.json").read_text())
        assert schema["properties"]["metric"]
        assert schema["$schema"].startswith("https://json-schema.org/")


class TestConfigErrors:
    def test_a_misspelt_variable_stops_the_command(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        monkeypatch.setenv("CXLOOP_DATABSE_URL", "postgresql://x/y")
        assert main(["schemas", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "CXLOOP_DATABSE_URL" in err
        assert "CXLOOP_DATABASE_URL" in err
