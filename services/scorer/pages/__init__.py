"""The dashboard: the scorer's pages, calling the same service functions as ``/v1``.

``templates/`` (Jinja2, extending ``shared/web/templates/base.html``), ``messages/`` (one
catalogue per language), ``static/`` (this page's script), ``routes.py`` (thin routes).
"""

from __future__ import annotations

from pathlib import Path

from shared.apikeys import KeyStore, Scope
from shared.settings import ScorerSettings
from shared.web.pages import Pages
from shared.web.sessions import SessionStore

HERE = Path(__file__).parent


def build(settings: ScorerSettings, keystore: KeyStore) -> Pages:
    """The dashboard's pages: signed in with a ``scores:read`` key."""
    return Pages(
        service="scorer",
        home="/dashboard",
        scopes=(Scope.SCORES_READ,),
        sessions=SessionStore("scorer", keystore, hours=settings.session_hours),
        templates=HERE / "templates",
        messages=HERE / "messages",
        static=HERE / "static",
        links={"dashboard": "/dashboard", "console": settings.console_url},
        prefixes=("/dashboard",),
    )
