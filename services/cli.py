"""The ``cxloop`` command: run the stack, one service, the migrations, or export the schemas."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from shared import logs
from shared.errors import ConfigError, SchemaOutdatedError
from shared.settings import (
    AlertingSettings,
    CollectorSettings,
    DatabaseSettings,
    HttpSettings,
    KafkaSettings,
    LogSettings,
    ScorerSettings,
    StackSettings,
    check_environment,
    load,
)


def _fail(command: str, message: str) -> int:
    print(f"cxloop {command}: {message}", file=sys.stderr)
    return 2


def _run_service(name: str) -> int:
    from fastapi import FastAPI

    from shared.runtime import serve

    logs.configure(load(LogSettings).level, name)
    factories: dict[str, tuple[Callable[[], FastAPI], type[HttpSettings]]] = {}
    if name == "collector":
        from services.collector.app import create_app as collector_app

        factories[name] = (collector_app, CollectorSettings)
    elif name == "scorer":
        from services.scorer.app import create_app as scorer_app

        factories[name] = (scorer_app, ScorerSettings)
    else:
        from services.alerting.app import create_app as alerting_app

        factories[name] = (alerting_app, AlertingSettings)
    factory, settings_cls = factories[name]
    if name != "collector":
        asyncio.run(_check_schema())
    serve(factory(), load(settings_cls))
    return 0


async def _check_schema() -> None:
    from services.migrations import MIGRATIONS_DIR
    from shared.db import assert_schema_current, create_engine

    engine = create_engine(load(DatabaseSettings))
    try:
        await assert_schema_current(engine, MIGRATIONS_DIR)
    finally:
        await engine.dispose()


def _migrate(args: argparse.Namespace) -> int:
    from services.migrations import upgrade

    logs.configure(load(LogSettings).level, "migrate")
    upgrade(load(DatabaseSettings).sqlalchemy_url(), args.revision)
    print(f"cxloop migrate: database is at {args.revision}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from shared.kafka import ensure_topics

    created = asyncio.run(
        ensure_topics(load(KafkaSettings), replication_factor=args.replication_factor)
    )
    print("created: " + (", ".join(created) if created else "nothing; every topic existed"))
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from shared.events import json_schemas

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for filename, schema in json_schemas().items():
        (out / filename).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(out / filename)
    return 0


def _up(args: argparse.Namespace) -> int:
    from services.stack import up

    overrides = {"broker": args.broker} if args.broker else {}
    return up(load(StackSettings, **overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxloop", description="Customer-experience feedback pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole stack locally (embedded broker and Postgres)")
    up.add_argument("--broker", choices=["tansu", "apache"], help="overrides CXLOOP_STACK_BROKER")
    up.set_defaults(run=_up)
    for name, text in (
        ("collector", "run the collector (HTTP ingest to Kafka)"),
        ("scorer", "run the scorer (Kafka to scores in Postgres, and the query API)"),
        ("alerting", "run the alerting service (Kafka to alerts in Postgres)"),
    ):
        service = sub.add_parser(name, help=text)
        service.set_defaults(run=lambda _args, n=name: _run_service(n))
    migrate = sub.add_parser("migrate", help="apply the database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(run=_migrate)
    topics = sub.add_parser("topics", help="create the Kafka topics with their partition counts")
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.set_defaults(run=_topics)
    schemas = sub.add_parser("schemas", help="write the JSON Schemas of the Kafka events")
    schemas.add_argument("--out", type=Path, default=Path("schemas"))
    schemas.set_defaults(run=_schemas)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_environment()
        code: int = args.run(args)
    except (ConfigError, SchemaOutdatedError) as exc:
        return _fail(args.command, str(exc))
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
