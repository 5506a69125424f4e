"""Comparing a presented secret or signature with the expected one, without ever raising.

``hmac.compare_digest`` raises ``TypeError`` on a ``str`` that is not ASCII, so a header
such as ``X-Twilio-Signature: é`` once answered 500. Every comparison of a signature, token
or key goes through :func:`matches`; every signature header is read with
:func:`single_header`, which refuses a header that is absent, repeated, empty, not ASCII
or longer than any signature cxloop checks.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

# Longer than any signature or key cxloop checks (a base64 SHA-256 is 44 characters).
MAX_PRESENTED = 1024


def _ascii(value: str | bytes) -> bytes | None:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return None


def matches(expected: str | bytes, presented: str | bytes | None) -> bool:
    """Return whether ``presented`` equals ``expected``, in constant time; never raises.

    An absent, empty, non-ASCII or over-long ``presented`` value is simply not a match.
    """
    if not presented or len(presented) > MAX_PRESENTED:
        return False
    want, got = _ascii(expected), _ascii(presented)
    if want is None or got is None:
        return False
    return hmac.compare_digest(want, got)


def single_header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """Return the one value of header ``name`` in raw ASGI ``headers``, if it is usable.

    None when the header is absent, repeated, empty, not ASCII, or longer than
    :data:`MAX_PRESENTED`: a request carrying such a header is refused, never compared.
    """
    wanted = name.lower().encode("ascii")
    values = [value for key, value in headers if key.lower() == wanted]
    if len(values) != 1:
        return None
    value = values[0].strip()
    if not value or len(value) > MAX_PRESENTED or not value.isascii():
        return None
    return value.decode("ascii")
