"""The ``cxloop`` command: run the stack, one service, the migrations, or export the schemas."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

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
    check_collector,
    check_environment,
    load,
    max_workers,
)


def _fail(command: str, message: str) -> int:
    print(f"cxloop {command}: {message}", file=sys.stderr)
    return 2


def _run_service(name: str, **overrides: Any) -> int:
    logs.configure(load(LogSettings), name)
    if name == "collector":
        collector = load(CollectorSettings, **overrides)
        if collector.workers > 1:
            return _run_workers(collector)
    from fastapi import FastAPI

    from shared.runtime import own_gc, serve

    own_gc()
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
    settings = load(settings_cls, **overrides)
    asyncio.run(_check_schema())
    app = factory()
    serve(app, settings)
    return 0


def _run_workers(collector: CollectorSettings) -> int:
    """Check the settings and the schema once, without building the app (the parent only
    supervises, so it stays small), then run the workers; each checks them again."""
    from shared.workers import serve_workers

    check_collector(collector)
    # In a process of its own, so this one never imports SQLAlchemy and the driver.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as apart:
        apart.submit(_check_schema_now).result()
    return serve_workers("services.collector.app:worker_app", collector, collector.workers)


def _check_schema_now() -> None:
    asyncio.run(_check_schema())


async def _check_schema() -> None:
    from services.migrations import MIGRATIONS_DIR
    from shared.db import assert_schema_current, create_engine

    engine = create_engine(load(DatabaseSettings))
    try:
        await assert_schema_current(engine, MIGRATIONS_DIR)
    finally:
        await engine.dispose()


def _collector(args: argparse.Namespace) -> int:
    if args.workers is None:
        return _run_service("collector")
    most = max_workers()
    if not 1 <= args.workers <= most:
        raise ConfigError(
            f"--workers: must be between 1 and {most} (4 per usable CPU), got {args.workers}"
        )
    # What the app (and each worker) reads, over a CXLOOP_COLLECTOR_WORKERS that may not parse.
    os.environ["CXLOOP_COLLECTOR_WORKERS"] = str(args.workers)
    return _run_service("collector")


def _scorer(args: argparse.Namespace) -> int:
    if args.action not in ("rebuild", "retention"):
        return _run_service("scorer")
    from services.scorer import repository
    from services.scorer.rebuild import rebuild
    from shared.db import create_engine

    async def run() -> str:
        await _check_schema()
        engine = create_engine(load(DatabaseSettings))
        try:
            if args.action == "retention":
                async with engine.begin() as conn:
                    periods = await repository.derive_retention(conn)
                return f"counted {periods} periods again from the customers' activity"
            done = await rebuild(engine)
            return (
                f"recomputed the buckets from {done.responses} responses and the revenue "
                f"facts from {done.orders} orders, and counted retention again"
            )
        finally:
            await engine.dispose()

    logs.configure(load(LogSettings), "rebuild")
    print(f"cxloop scorer {args.action}: {asyncio.run(run())}")
    return 0


def _alerting(args: argparse.Namespace) -> int:
    if args.action != "check-config":
        return _run_service("alerting")
    from services.alerting.config import load as load_config

    path = args.path or load(AlertingSettings).config_path
    if path is None:
        raise ConfigError("name the file, or set CXLOOP_ALERTING_CONFIG_PATH")
    config = load_config(path)
    rules: list[Any] = [getattr(config.rules, name) for name in type(config.rules).model_fields]
    runbooks = sum(1 for rule in [*rules, *config.score_drops] if rule.runbook_url)
    print(
        f"{path}: ok ({len(config.receivers)} receiver(s), {len(config.routes)} route(s), "
        f"{len(config.ticket_urls)} ticket link template(s), {runbooks} rule runbook(s))"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from services.migrations import upgrade

    logs.configure(load(LogSettings), "migrate")
    upgrade(load(DatabaseSettings).sqlalchemy_url(), args.revision)
    print(f"cxloop migrate: database is at {args.revision}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from shared.kafka import ensure_topics

    logs.configure(load(LogSettings), "topics")  # an uncaught error is a log line too
    kafka = load(KafkaSettings)
    created = asyncio.run(
        ensure_topics(
            kafka, replication_factor=args.replication_factor, retention_ms=kafka.retention_ms()
        )
    )
    print("created: " + (", ".join(created) if created else "nothing; every topic existed"))
    retention = kafka.retention_ms()
    print(
        f"retention.ms={retention} segment.ms={min(retention, 86_400_000)} on every topic "
        "(CXLOOP_KAFKA_RETENTION_DAYS)"
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    logs.configure(load(LogSettings), "keys")  # an uncaught error is a log line too
    return asyncio.run(_keys_async(args))


async def _keys_async(args: argparse.Namespace) -> int:
    from shared.apikeys import KeyKind, Scope, create_key, list_keys, revoke_key
    from shared.db import create_engine

    engine = create_engine(load(DatabaseSettings))
    try:
        async with engine.begin() as conn:
            if args.keys_command == "create":
                if args.publishable and (args.scope or args.source):
                    raise ConfigError(
                        "--publishable takes no --scope or --source: a publishable key is "
                        "visible in the browser and only ever submits widget answers"
                    )
                scopes = [Scope(s) for s in args.scope] or (
                    [Scope.RESPONSES_WRITE] if args.publishable else []
                )
                if not scopes:
                    raise ConfigError("name at least one --scope: " + ", ".join(Scope))
                key, key_id = await create_key(
                    conn,
                    name=args.name,
                    kind=KeyKind.PUBLISHABLE if args.publishable else KeyKind.SECRET,
                    scopes=scopes,
                    sources=["widget"] if args.publishable else args.source,
                    origins=args.origin,
                )
                print(f"created key {key_id} ({args.name}); it is shown only now:\n{key}")
            elif args.keys_command == "list":
                for row in await list_keys(conn):
                    state = "revoked" if row["revoked_at"] else "active"
                    print(
                        f"{row['id']}  {row['prefix']}…  {state:7}  {row['kind']:11}  "
                        f"{row['name']}  scopes={','.join(row['scopes'])}"
                        + (f"  sources={','.join(row['sources'])}" if row["sources"] else "")
                        + (f"  origins={','.join(row['origins'])}" if row["origins"] else "")
                    )
            elif not await revoke_key(conn, args.id):
                print(f"cxloop keys revoke: no active key {args.id}", file=sys.stderr)
                return 1
            else:
                print(
                    f"revoked {args.id}; services refuse it once their cache expires "
                    "(CXLOOP_KEY_CACHE_SECONDS)"
                )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        await engine.dispose()
    return 0


def _config(args: argparse.Namespace) -> int:
    from shared.settings import markdown_table

    print(markdown_table())
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from services.simulate import Target, load_target, simulate

    if args.collector:
        if not args.key:
            raise ConfigError("--collector needs --key (an API key for it)")
        target = Target(
            args.collector.rstrip("/"), args.key, args.twilio_token, args.zendesk_secret
        )
    else:
        target = load_target()
    outcomes = asyncio.run(simulate(target, args.rate, args.duration, args.seed))
    for outcome, count in sorted(outcomes.items()):
        print(f"{outcome:>20}  {count}")
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


def _scopes() -> list[str]:
    from shared.apikeys import Scope

    return [s.value for s in Scope]


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
        if name == "collector":
            service.add_argument(
                "--workers",
                type=int,
                help="processes serving the port (overrides CXLOOP_COLLECTOR_WORKERS)",
            )
            service.set_defaults(run=_collector)
        if name == "scorer":
            service.add_argument(
                "action",
                nargs="?",
                choices=["rebuild", "retention"],
                help="rebuild: recompute the score buckets from the raw responses, the revenue "
                "facts from the raw orders and retention from the activity, then exit; "
                "retention: count retention again from the customers' activity (after a "
                "rollout across migration 0023 during which older scorers ran), then exit",
            )
            service.set_defaults(run=_scorer)
        if name == "alerting":
            service.add_argument(
                "action",
                nargs="?",
                choices=["check-config"],
                help="check-config: validate the receivers and routes file, then exit",
            )
            service.add_argument(
                "path", nargs="?", type=Path, help="the file (default CXLOOP_ALERTING_CONFIG_PATH)"
            )
            service.set_defaults(run=_alerting)
    migrate = sub.add_parser("migrate", help="apply the database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(run=_migrate)
    topics = sub.add_parser(
        "topics", help="create the Kafka topics with their partition counts, and set retention"
    )
    topics.add_argument("--replication-factor", type=int, default=1)
    topics.set_defaults(run=_topics)
    keys = sub.add_parser("keys", help="create, list and revoke scoped API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True, help="who or what uses it")
    create.add_argument(
        "--scope", action="append", default=[], help="repeatable: " + ", ".join(_scopes())
    )
    create.add_argument(
        "--source", action="append", default=[], help="repeatable: limit it to these adapters"
    )
    create.add_argument("--publishable", action="store_true", help="a widget key for browsers")
    create.add_argument(
        "--origin", action="append", default=[], help="repeatable: an origin a widget key may use"
    )
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=uuid.UUID)
    keys.set_defaults(run=_keys)
    sim = sub.add_parser("simulate", help="send realistic demo traffic to a running stack")
    sim.add_argument("--rate", type=float, default=20.0, help="items per second (default 20)")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    sim.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    sim.add_argument("--collector", help="collector URL (default: the running `cxloop up`)")
    sim.add_argument("--key", help="API key, with --collector")
    sim.add_argument("--twilio-token", help="Twilio auth token the collector checks, if any")
    sim.add_argument("--zendesk-secret", help="Zendesk signing secret the collector checks, if any")
    sim.set_defaults(run=_simulate)
    config = sub.add_parser("config", help="print every CXLOOP_* variable as a Markdown table")
    config.set_defaults(run=_config)
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
