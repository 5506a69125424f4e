"""Migrations apply, revert, and an outdated schema stops a service with the fix named."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from services.migrations import MIGRATIONS_DIR, downgrade, upgrade
from shared.db import assert_schema_current
from shared.errors import SchemaOutdatedError


class TestMigrations:
    async def test_upgrade_downgrade_upgrade(self, empty_database_url: str) -> None:
        await asyncio.to_thread(upgrade, empty_database_url)
        await asyncio.to_thread(downgrade, empty_database_url, "base")
        await asyncio.to_thread(upgrade, empty_database_url)
        engine = create_async_engine(empty_database_url)
        try:
            await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()

    async def test_outdated_schema_is_refused(self, empty_database_url: str) -> None:
        engine = create_async_engine(empty_database_url)
        try:
            with pytest.raises(SchemaOutdatedError, match="run `cxloop migrate`"):
                await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()

    @pytest.mark.parametrize("service", ["scorer", "alerting"])
    async def test_service_exits_naming_the_command(
        self, service: str, empty_database_url: str
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env |= {"CXLOOP_DATABASE_URL": empty_database_url, "CXLOOP_API_KEY": "k" * 20}
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", service],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert "run `cxloop migrate`" in result.stderr
        assert "Traceback" not in result.stderr

    async def test_cxloop_migrate_brings_it_to_head(self, empty_database_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env["CXLOOP_DATABASE_URL"] = empty_database_url
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "migrate"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        engine = create_async_engine(empty_database_url)
        try:
            await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()
