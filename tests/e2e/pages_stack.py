"""The three services as processes on the tests' real Kafka and Postgres, fed by
``cxloop simulate``, for the browser tests of the dashboard and the console.

Use the ``pages_stack`` fixture (module-scoped: one stack per test module, as a person
would have one running) from ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from services.simulate import Target, simulate
from shared.web.sessions import sign_in_link_for
from tests.processes import Service, service_env

TWILIO_TOKEN = "pages-twilio-token-" + "0" * 12
ZENDESK_SECRET = "pages-zendesk-secret-0123456789"


@dataclass
class PagesStack:
    """Running services, their key, and their database."""

    collector: Service
    scorer: Service
    alerting: Service
    api_key: str
    database_url: str

    def page(self, service: str) -> str:
        """The dashboard's or the console's URL."""
        if service == "scorer":
            return self.scorer.url + "/dashboard"
        return self.alerting.url + "/console"

    async def sign_in_link(self, service: str) -> str:
        """A fresh one-time link that signs the stack's key in to ``service``'s pages."""
        token = await sign_in_link_for(
            self.database_url,
            service=service,
            api_key=self.api_key,
            valid_for=timedelta(minutes=10),
        )
        base = self.scorer.url if service == "scorer" else self.alerting.url
        return f"{base}/signin/link?token={token}"

    async def simulate(self, items: int, rate: float = 40.0, seed: int = 7) -> Counter[str]:
        """Send ``items`` answers and ticket events as ``cxloop simulate`` does."""
        target = Target(self.collector.url, self.api_key, TWILIO_TOKEN, ZENDESK_SECRET)
        return await simulate(target, rate, items / rate, seed=seed)


async def start(
    bootstrap: str, topic_prefix: str, database_url: str, idempotence: bool
) -> PagesStack:
    """Start the collector, scorer and alerting (cross-linked) and wait until ready."""
    api_key = "pages-" + uuid.uuid4().hex
    names = ("collector", "scorer", "alerting")
    services = {name: Service(name, {}, api_key) for name in names}
    env = service_env(
        bootstrap=bootstrap,
        prefix=topic_prefix,
        database_url=database_url,
        api_key=api_key,
        CXLOOP_KAFKA_IDEMPOTENCE=str(idempotence).lower(),
        CXLOOP_SOURCES_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        CXLOOP_SOURCES_ZENDESK_SIGNING_SECRET=ZENDESK_SECRET,
        CXLOOP_COLLECTOR_PUBLIC_URL=services["collector"].url,
        CXLOOP_SCORER_CONSOLE_URL=services["alerting"].url + "/console",
        CXLOOP_ALERTING_DASHBOARD_URL=services["scorer"].url + "/dashboard",
        # Small samples are the point of a test: show scores from 5 answers on.
        CXLOOP_SCORER_MIN_N="5",
    )
    for service in services.values():
        service.env = env
    await asyncio.gather(*(s.start() for s in services.values()))
    return PagesStack(**services, api_key=api_key, database_url=database_url)


async def stop(stack: PagesStack) -> None:
    await asyncio.gather(stack.collector.stop(), stack.scorer.stop(), stack.alerting.stop())
