"""Security headers of every page: a strict Content-Security-Policy and its companions.

The policy allows scripts, styles, images and fetches from the page's own origin only: no
inline script or style, no ``eval``, no framing, forms posting only to the same origin.
Chart libraries that set ``element.style`` from a script are not affected (the CSSOM is
not an inline style attribute).
"""

from __future__ import annotations

from typing import Any

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)

_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    # No URL (they name customers) leaves the site in a Referer. Not "no-referrer": under it
    # a browser sends every form POST with `Origin: null`, which the gate must refuse.
    (b"referrer-policy", b"same-origin"),
]
_HTML = [
    (b"content-security-policy", CSP.encode("ascii")),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    # Pages show customers' answers: nothing may keep a copy.
    (b"cache-control", b"no-store"),
]


# The same, for a response built in Python: a page sets them itself, so that even an error
# page rendered outside this middleware (Starlette's last-resort handler) carries them.
HTML_HEADERS = {k.decode(): v.decode() for k, v in _ALWAYS + _HTML}


class SecurityHeadersMiddleware:
    """Add the headers above: the CSP and no-store to every HTML response (the pages and
    their error pages), ``nosniff`` and ``Referrer-Policy: same-origin`` to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                extra = list(_ALWAYS)
                if content_type.startswith(b"text/html"):
                    extra += _HTML
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
