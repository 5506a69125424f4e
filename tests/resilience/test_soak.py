"""Five minutes at a fixed rate through the three services: no errors, memory that levels
off, and as many answers scored as were accepted (``CXLOOP_TEST_SOAK_SECONDS`` shortens it)."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.processes import Load, Service, scalar, wait_for

pytestmark = [pytest.mark.resilience, pytest.mark.timeout(900)]

SECONDS = int(os.environ.get("CXLOOP_TEST_SOAK_SECONDS", "300"))
RATE = 50
WARM_UP = 60


async def test_five_minutes_at_a_fixed_rate_with_no_errors_no_loss_and_bounded_memory(
    stack_env: dict[str, str], database_url: str, api_key: str
) -> None:
    services = [Service(name, stack_env, api_key) for name in ("collector", "scorer", "alerting")]
    for service in services:
        await service.start()
    rss: dict[str, list[int]] = {s.name: [] for s in services}
    # Start-up may log a broker's transient "coordinator not available"; the soak is after.
    started = {s.name: len(s.log) for s in services}
    try:
        async with services[0].client(timeout=15) as client:
            load = Load(client, rate=RATE, detractor_every=10)
            running = asyncio.create_task(load.run())
            for _ in range(SECONDS // 10):
                await asyncio.sleep(10)
                for s in services:
                    rss[s.name].append(s.rss_kib())
            load.stop()
            await running

        statuses = {status for *_, status in load.outcomes}
        assert statuses == {202}, f"answers other than 202: {statuses}"
        accepted = load.accepted()
        assert len(accepted) >= RATE * SECONDS * 0.95, "the load kept its rate"
        detractors = sum(1 for i in accepted if load.payloads[i]["score"] <= 6)
        await wait_for(
            lambda: scalar(database_url, "SELECT coalesce(sum(n), 0) FROM score_buckets"),
            lambda n: n == len(accepted),
            timeout=60,
        )
        await wait_for(
            lambda: scalar(database_url, "SELECT count(*) FROM alerts"),
            lambda n: n == detractors,
            timeout=60,
        )
        for s in services:
            assert s.errors(since=started[s.name]) == [], f"{s.name} logged errors"
            settled = rss[s.name][WARM_UP // 10 - 1]
            peak_after = max(rss[s.name][WARM_UP // 10 :])
            # After warm-up, memory may wobble but not climb with the traffic.
            assert peak_after <= settled * 1.2 + 10_240, (s.name, rss[s.name])
    finally:
        for service in reversed(services):
            await service.stop()
