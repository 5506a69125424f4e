"""Every route documents itself: a summary, a description, and examples for its bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from services.alerting.app import create_app as alerting_app
from services.collector.app import create_app as collector_app
from services.scorer.app import create_app as scorer_app
from shared.settings import AuthSettings

APPS: dict[str, Callable[..., FastAPI]] = {
    "collector": collector_app,
    "scorer": scorer_app,
    "alerting": alerting_app,
}


def spec(name: str) -> dict[str, Any]:
    app: FastAPI = APPS[name](auth=AuthSettings(api_key="k" * 20))
    return app.openapi()


@pytest.mark.parametrize("name", list(APPS))
def test_every_operation_is_described(name: str) -> None:
    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in spec(name)["paths"].items()
        for method, operation in operations.items()
        if not operation.get("summary") or not operation.get("description")
    ]
    assert undocumented == []


@pytest.mark.parametrize("name", list(APPS))
def test_every_keyed_operation_documents_the_database_503(name: str) -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, operations in spec(name)["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") and "503" not in operation["responses"]
    ]
    assert missing == []


def test_collector_request_bodies_carry_examples() -> None:
    schemas = spec("collector")["components"]["schemas"]
    for model in ("ResponseIn", "EventIn", "InvitationIn", "GenericIvrCall"):
        assert schemas[model].get("examples"), model


def test_the_whole_surface_is_there() -> None:
    paths = set(spec("collector")["paths"])
    assert {
        "/v1/responses",
        "/v1/responses/batch",
        "/v1/events",
        "/v1/events/batch",
        "/v1/invitations",
        "/v1/sources/twilio/sms",
        "/v1/sources/zendesk",
        "/v1/sources/freshdesk",
        "/v1/sources/stripe",
        "/v1/sources/amazon-connect",
        "/v1/sources/ivr",
        "/v1/widget/responses",
        "/widget.js",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths


def test_the_order_example_is_a_valid_order() -> None:
    from services.collector.schemas import EventIn

    examples = spec("collector")["components"]["schemas"]["EventIn"]["examples"]
    orders = [e for e in examples if e["type"].startswith("order.")]
    assert {e["type"] for e in orders} == {"order.completed", "order.refunded"}
    for example in orders:
        EventIn.model_validate(example)


def test_the_stripe_webhook_documents_its_signature_and_its_ignored_answer() -> None:
    document = spec("collector")
    operation = document["paths"]["/v1/sources/stripe"]["post"]
    (header,) = [p for p in operation["parameters"] if p["name"] == "Stripe-Signature"]
    assert header["in"] == "header"
    assert header["required"] is True
    ignored = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ignored == {"$ref": "#/components/schemas/Ignored"}
    fields = document["components"]["schemas"]["Ignored"]["properties"]
    assert set(fields) == {"status", "reason", "detail"}


def test_json_integer_amounts_are_said_to_be_major_units() -> None:
    amount = spec("collector")["components"]["schemas"]["EventIn"]["properties"]["amount"]
    assert "MAJOR units" in str(amount)


def test_the_value_example_has_the_answer_s_shape() -> None:
    from services.scorer.schemas import VALUE_FORMULAS, ValueOut

    scorer = spec("scorer")
    schemas = scorer["components"]["schemas"]
    (example,) = schemas["ValueOut"]["examples"]
    # The example is an answer (its figures: test_value_api); FastAPI's spec leaves out its
    # nulls, the model's schema keeps them.
    (whole,) = ValueOut.model_json_schema()["examples"]
    ValueOut.model_validate(whole)
    (currency,) = example["currencies"]
    assert [c["category"] for c in currency["by_nps"]] == [
        "promoter",
        "passive",
        "detractor",
        "unrated",
    ]
    assert example["formulas"] == VALUE_FORMULAS
    assert schemas["NpsCategoryValue"]["properties"]["category"]["enum"] == [
        "promoter",
        "passive",
        "detractor",
        "unrated",
    ]
    assert "≈" in currency["clv_formula"]
    params = {p["name"]: p for p in scorer["paths"]["/v1/value"]["get"]["parameters"]}
    for name in ("location", "product", "business_unit"):
        assert params[name]["schema"]["anyOf"][0]["maxLength"] == 128
