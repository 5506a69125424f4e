"""Twilio's request signature, computed as Twilio documents it.

Tests sign with the official ``twilio`` library, so this code is never checked only against
itself.

signature = base64(HMAC-SHA1(auth_token, url + every POST field as name+value, sorted by name))
where url is exactly what Twilio requested: scheme, host, port and query string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from shared import signatures


def compute(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Return the signature Twilio sends for a POST of ``params`` to ``url``."""
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid(
    auth_token: str, urls: Sequence[str], params: Sequence[tuple[str, str]], signature: str
) -> bool:
    """Return whether ``signature`` matches any of the URLs Twilio may have signed."""
    return any(signatures.matches(compute(auth_token, url, params), signature) for url in urls)


def candidate_urls(url: str) -> list[str]:
    """Return ``url`` with and without its default port: Twilio signs the URL as configured."""
    candidates = [url]
    for scheme, port in (("https", "443"), ("http", "80")):
        prefix = f"{scheme}://"
        if url.startswith(prefix):
            host, _, rest = url[len(prefix) :].partition("/")
            if host.endswith(f":{port}"):
                candidates.append(f"{prefix}{host[: -len(port) - 1]}/{rest}")
            elif ":" not in host:
                candidates.append(f"{prefix}{host}:{port}/{rest}")
    return candidates
