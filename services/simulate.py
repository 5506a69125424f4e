"""``cxloop simulate``: realistic traffic at a chosen rate, for a demo or a smoke test.

Against a running ``cxloop up`` it needs no arguments: it reads the stack's URLs, key and
local vendor secrets from the state file ``cxloop up`` leaves. It sends, mixed:

* web answers (NPS, CSAT, CES) as the widget posts them (publishable key, Origin,
  text/plain; within the widget's per-address rate limit) and through the JSON API, with
  NPS+ reasons and comments;
* SMS replies: an invitation, then the reply as Twilio posts it, signed;
* post-call IVR surveys as generic IVR JSON;
* Zendesk ticket lifecycles, signed, some created hours ago with no reply so that they
  breach their SLA at once;
* orders (``order.completed``, in JPY and some in USD) and now and then a refund, dated
  over the past months.

Scores differ by channel and location, and detractors carry realistic comments in Japanese
and English. Each customer has a loyalty of their own that leans their answers, so the
same customers keep being promoters or detractors; loyal customers buy more often and
spend more, and detractors ask for more refunds, so that ``/v1/value``'s split by NPS
category shows what loyalty is worth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from services.collector.sources.twilio_signature import compute as twilio_signature

LOCATIONS = {"tokyo-shibuya": 1.0, "osaka-umeda": 0.3, "nagoya-sakae": -0.8, "fukuoka-tenjin": 0.2}
WIDGET_SPACING = 2.5  # seconds: within the default 30 a minute per client address
CHANNEL_MOOD = {"web": 0.8, "sms": 0.0, "call_center": -1.2, "email": -0.3}
COMMENTS: dict[str, list[tuple[str | None, list[str]]]] = {
    "low": [
        ("配送が遅すぎました。二度と使いません。", ["delivery_speed"]),
        ("電話がなかなかつながらず、30分も待たされた", ["wait_time"]),
        ("担当者の説明が分かりにくかったです", ["agent_knowledge"]),
        ("The app kept crashing at checkout.", ["app", "ease_of_use"]),
        ("Charged twice and nobody called me back.", ["billing", "communication"]),
        ("Too expensive for what you get.", ["price"]),
    ],
    "mid": [
        ("まあまあでした", []),
        ("Fine, but delivery could be faster.", ["delivery_speed"]),
        (None, []),
    ],
    "high": [
        ("スタッフの対応がとても丁寧でした！", ["agent_attitude"]),
        ("Super easy, done in two minutes.", ["ease_of_use"]),
        (None, []),
    ],
}


@dataclass
class Target:
    """Where to send, with what credentials."""

    collector: str
    api_key: str
    twilio_auth_token: str | None
    zendesk_signing_secret: str | None
    widget_key: str | None = None
    widget_origin: str | None = None


def load_target(path: Path | None = None) -> Target:
    """Read the state file of a running ``cxloop up``."""
    from services.stack import state_file

    path = path or state_file()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"cxloop simulate: no running stack found ({path}): start `cxloop up`, "
            "or pass --collector and --key"
        ) from None
    return Target(
        state["collector"],
        state["api_key"],
        state.get("twilio_auth_token"),
        state.get("zendesk_signing_secret"),
        state.get("widget_key"),
        state.get("widget_origin"),
    )


CUSTOMERS = 400
ORDER_DAYS = 180  # orders are dated over the past half year


@cache
def loyalty(customer: int) -> float:
    """Return the customer's own lean, the same in every run: about −3 (a detractor) to +2."""
    return random.Random(f"loyalty-{customer}").gauss(-0.3, 1.6)  # noqa: S311 - demo data


def _customer(rng: random.Random) -> int:
    return rng.randint(1, CUSTOMERS)


def _nps(rng: random.Random, channel: str, location: str, customer: int | None = None) -> int:
    lean = 0.0 if customer is None else loyalty(customer)
    mood = CHANNEL_MOOD[channel] + LOCATIONS[location] + lean + rng.gauss(0, 1.6)
    return max(0, min(10, round(7.5 + mood)))


@cache
def _buying_weights() -> list[float]:
    return list(itertools.accumulate(math.exp(loyalty(c)) for c in range(1, CUSTOMERS + 1)))


def order_for(rng: random.Random, now: datetime) -> dict[str, Any]:
    """Return an ``order.completed`` body from a customer drawn by how often they buy.

    A customer buys in proportion to e^loyalty (a loyal one several times as often as a
    detractor) and spends a log-normal amount that grows with loyalty; one order in ten is
    in USD (cents), the rest in JPY (no decimals).
    """
    customer = rng.choices(range(1, CUSTOMERS + 1), cum_weights=_buying_weights())[0]
    lean = loyalty(customer)
    size = rng.lognormvariate(0, 0.5) * (1 + 0.15 * max(-2.0, lean))
    usd = rng.random() < 0.1
    amount = f"{max(1.0, 40 * size):.2f}" if usd else str(max(100, round(4800 * size, -1)))
    when = now - timedelta(days=rng.uniform(0, ORDER_DAYS))
    return {
        "type": "order.completed",
        "event_id": str(uuid.uuid4()),
        "order_id": f"sim-{uuid.uuid4().hex[:16]}",
        "customer_id": f"cust-{customer}",
        "channel": rng.choice(["web", "web", "in_app", "in_person"]),
        "currency": "USD" if usd else "JPY",
        "amount": amount,
        "occurred_at": when.isoformat(),
        "segments": {"location": rng.choice(list(LOCATIONS)), "product": "store"},
    }


def _comment(rng: random.Random, score: int, high: int) -> tuple[str | None, list[str]]:
    band = "low" if score <= high * 0.6 else "mid" if score < high * 0.9 else "high"
    return rng.choice(COMMENTS[band])


class Simulator:
    """Sends one kind of traffic per call, and counts what the collector answered."""

    def __init__(self, client: httpx.AsyncClient, target: Target, rng: random.Random) -> None:
        self.client = client
        self.target = target
        self.rng = rng
        self.outcomes: Counter[str] = Counter()
        self.auth = {"Authorization": f"Bearer {target.api_key}"}
        self._last_widget = -WIDGET_SPACING

    def _widget_turn(self) -> bool:
        # The widget endpoint limits each client address (the simulator has one) to a few
        # answers a minute, as browsers would spread them; the rest go through the API.
        now = time.monotonic()
        if now - self._last_widget < WIDGET_SPACING:
            return False
        self._last_widget = now
        return True

    def _note(self, kind: str, response: httpx.Response) -> None:
        self.outcomes[f"{kind} {response.status_code}"] += 1

    async def web_answer(self) -> None:
        rng = self.rng
        location = rng.choice(list(LOCATIONS))
        channel = rng.choice(["web", "web", "email", "call_center"])
        metric = rng.choice(["nps", "nps", "csat", "ces"])
        customer = _customer(rng)
        score = _nps(rng, channel, location, customer)
        body: dict[str, Any] = {
            "metric": metric,
            "channel": channel,
            "survey_type": rng.choice(["transactional", "in_the_moment"]),
            "touchpoint": rng.choice(["checkout", "delivery", "support_call"]),
            "customer_id": f"cust-{customer}",
            "segments": {"location": location, "product": rng.choice(["app", "store"])},
            "event_id": str(uuid.uuid4()),
        }
        if metric == "nps":
            body["score"] = score
        elif metric == "csat":
            body["score"] = max(1, min(5, round(score / 2)))
        else:
            body |= {"scale": 7, "score": max(1, min(7, round(score * 0.7)))}
        comment, reasons = _comment(
            rng, body["score"], body.get("scale", 10 if metric == "nps" else 5)
        )
        if comment:
            body["comment"] = comment
        body["reasons"] = reasons
        if (
            channel == "web"
            and self.target.widget_key
            and self.target.widget_origin
            and self._widget_turn()
        ):
            # As the widget posts from the shop's page: text/plain, publishable key, Origin.
            url = f"{self.target.collector}/v1/widget/responses?key={self.target.widget_key}"
            headers = {"Origin": self.target.widget_origin, "Content-Type": "text/plain"}
            response = await self.client.post(url, content=json.dumps(body), headers=headers)
            self._note("widget", response)
            return
        self._note(
            "api",
            await self.client.post(
                f"{self.target.collector}/v1/responses", json=body, headers=self.auth
            ),
        )

    async def sms_reply(self) -> None:
        if not self.target.twilio_auth_token:
            return
        rng = self.rng
        phone = f"+8190{rng.randint(10_000_000, 99_999_999)}"
        location = rng.choice(list(LOCATIONS))
        customer = _customer(rng)
        invite = {
            "customer_id": f"cust-{customer}",
            "phone": phone,
            "metric": "nps",
            "touchpoint": "support_call",
            "locale": rng.choice(["ja-JP", "en-US"]),
            "segments": {"location": location},
        }
        r = await self.client.post(
            f"{self.target.collector}/v1/invitations", json=invite, headers=self.auth
        )
        self._note("invitation", r)
        if r.status_code != 201 or r.json()["status"] != "open":
            return
        score = _nps(rng, "sms", location, customer)
        comment, _ = _comment(rng, score, 10)
        text = rng.choice(
            [
                f"{score}",
                f" {score} ",
                f"{score}/10",
                f"{score} - {comment or ''}",
                "９" if score == 9 else str(score),
            ]
        )
        form = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "AccountSid": "AC" + "0" * 32,
            "From": phone,
            "To": "+815000000000",
            "Body": text,
            "NumMedia": "0",
        }
        url = f"{self.target.collector}/v1/sources/twilio/sms"
        signature = twilio_signature(self.target.twilio_auth_token, url, list(form.items()))
        r = await self.client.post(
            url,
            content=urlencode(form),
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        self._note("sms", r)

    async def ivr_survey(self) -> None:
        rng = self.rng
        customer = _customer(rng)
        score = _nps(rng, "call_center", rng.choice(list(LOCATIONS)), customer)
        body = {
            "call_id": str(uuid.uuid4()),
            "customer_id": f"cust-{customer}",
            "queue": rng.choice(["billing", "support", "sales"]),
            "answers": {
                "survey_result_1": str(score),
                "survey_result_2": str(max(1, min(5, round(score / 2)))),
            },
        }
        self._note(
            "ivr",
            await self.client.post(
                f"{self.target.collector}/v1/sources/ivr", json=body, headers=self.auth
            ),
        )

    async def ticket_lifecycle(self) -> None:
        secret = self.target.zendesk_signing_secret
        if not secret:
            return
        rng = self.rng
        ticket = rng.randint(10_000, 99_999)
        breach = rng.random() < 0.3
        # Two days back is past every default first-response SLA: these alert at once.
        start = datetime.now(UTC) - (timedelta(days=2) if breach else timedelta(minutes=20))
        priority = rng.choice(["LOW", "NORMAL", "HIGH", "URGENT"])
        steps: list[tuple[str, dict[str, Any], datetime]] = [("ticket.created", {}, start)]
        if not breach:
            steps += [
                (
                    "ticket.comment_added",
                    {"comment": {"is_public": True, "author": {"is_staff": True}}},
                    start + timedelta(minutes=rng.randint(2, 15)),
                ),
                (
                    "ticket.status_changed",
                    {"previous": "OPEN", "current": "SOLVED"},
                    start + timedelta(minutes=rng.randint(16, 19)),
                ),
            ]
        for kind, event, at in steps:
            body = {
                "type": f"zen:event-type:{kind}",
                "account_id": 1,
                "id": str(uuid.uuid4()),
                "time": at.isoformat(),
                "subject": f"zen:ticket:{ticket}",
                "detail": {
                    "id": str(ticket),
                    "requester_id": str(_customer(rng)),
                    "priority": priority,
                    "status": "OPEN",
                    "via": {"channel": rng.choice(["email", "web_form", "chat"])},
                },
                "event": event,
            }
            raw = json.dumps(body).encode()
            stamp = datetime.now(UTC).isoformat()  # signed when sent, not when it happened
            digest = hmac.new(secret.encode(), stamp.encode() + raw, hashlib.sha256).digest()
            r = await self.client.post(
                f"{self.target.collector}/v1/sources/zendesk",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
                    "X-Zendesk-Webhook-Signature-Timestamp": stamp,
                },
            )
            self._note("zendesk", r)

    async def purchase(self) -> None:
        order = order_for(self.rng, datetime.now(UTC))
        url = f"{self.target.collector}/v1/events"
        response = await self.client.post(url, json=order, headers=self.auth)
        self._note("order", response)
        # Detractors ask for their money back more often than promoters.
        customer = int(order["customer_id"].removeprefix("cust-"))
        if response.status_code == 202 and self.rng.random() < 0.06 - 0.02 * loyalty(customer):
            refund = {
                **order,
                "type": "order.refunded",
                "event_id": str(uuid.uuid4()),
                "refund_id": f"{order['order_id']}-r1",
                "occurred_at": datetime.now(UTC).isoformat(),
            }
            self._note("refund", await self.client.post(url, json=refund, headers=self.auth))


def _progress(done: int, total: int, started: float, outcomes: Counter[str]) -> None:
    width = 30
    filled = int(width * done / max(1, total))
    ok = sum(v for k, v in outcomes.items() if k.split()[-1].startswith("2"))
    bad = sum(outcomes.values()) - ok
    bar = "#" * filled + "." * (width - filled)
    elapsed = time.monotonic() - started
    sys.stderr.write(f"\r[{bar}] {done}/{total} in {elapsed:4.1f}s  accepted {ok}  refused {bad} ")
    sys.stderr.flush()


async def simulate(
    target: Target, rate: float, duration: float, seed: int | None = None
) -> Counter[str]:
    """Send ``rate`` items a second for ``duration`` seconds; return the answers counted."""
    rng = random.Random(seed)  # noqa: S311 - demo traffic, not secrets
    total = max(1, int(rate * duration))
    async with httpx.AsyncClient(timeout=15) as client:
        sim = Simulator(client, target, rng)
        kinds = (
            [sim.web_answer] * 6
            + [sim.sms_reply] * 2
            + [sim.ivr_survey]
            + [sim.ticket_lifecycle]
            + [sim.purchase] * 3
        )
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for i in range(total):
            # Paced by the clock, not by the answers, so a slow collector shows as slowness.
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            task = asyncio.create_task(rng.choice(kinds)())
            pending.add(task)
            task.add_done_callback(pending.discard)
            if i % max(1, int(rate / 4)) == 0:
                _progress(i, total, started, sim.outcomes)
        if pending:
            await asyncio.gather(*pending)
        _progress(total, total, started, sim.outcomes)
        sys.stderr.write("\n")
    return sim.outcomes
