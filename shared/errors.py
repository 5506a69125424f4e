"""The cxloop error tree.

::

    CxloopError
    ├── ConfigError            bad or missing configuration; the process must not start
    ├── SchemaOutdatedError    the database is behind the code; run `cxloop migrate`
    ├── TransientError         retry later: nothing is lost, nothing is committed
    │   └── BrokerUnavailableError
    └── PermanentError         retrying cannot help: reject it, or dead-letter it
        └── PoisonMessageError a consumed record that cannot be decoded or validated

A consumer retries a ``TransientError`` with backoff and commits no offset; it sends
the record behind a ``PermanentError`` to the dead-letter topic and moves on. Over HTTP,
every ``PermanentError`` is answered 422 naming its ``field`` (the bad field, when known).
"""

from __future__ import annotations


class CxloopError(Exception):
    """The base of every error cxloop raises on purpose."""


class ConfigError(CxloopError):
    """The configuration is invalid; the message names the variable."""


class SchemaOutdatedError(CxloopError):
    """The database schema is not at the revision the code expects."""


class TransientError(CxloopError):
    """A dependency is unavailable for now; the same work may succeed later."""


class BrokerUnavailableError(TransientError):
    """Kafka did not acknowledge in time."""


class PermanentError(CxloopError):
    """The input itself is wrong; retrying the same input cannot succeed.

    ``field`` names the bad field (a dotted path) when one is to blame; over HTTP every
    ``PermanentError`` is answered 422 naming it (``shared.http.errors``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PoisonMessageError(PermanentError):
    """A consumed record cannot be decoded into a known event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
