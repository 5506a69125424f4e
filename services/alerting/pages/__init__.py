"""The on-call console: the alerting service's pages, calling the same service functions
as ``/v1``.

``templates/`` (Jinja2, extending ``shared/web/templates/base.html``), ``messages/`` (one
catalogue per language), ``static/`` (this page's script), ``routes.py`` (thin routes).
"""

from __future__ import annotations

from pathlib import Path

from shared.apikeys import KeyStore, Scope
from shared.settings import AlertingSettings
from shared.web.pages import Pages
from shared.web.sessions import SessionStore

HERE = Path(__file__).parent
FORM_LIMIT = 128 * 1024


def build(settings: AlertingSettings, keystore: KeyStore) -> Pages:
    """The console's pages: signed in with an ``alerts:read`` key (acting needs
    ``alerts:write`` too)."""
    return Pages(
        service="alerting",
        home="/console",
        scopes=(Scope.ALERTS_READ,),
        sessions=SessionStore("alerting", keystore, hours=settings.session_hours),
        templates=HERE / "templates",
        messages=HERE / "messages",
        static=HERE / "static",
        links={
            "console": "/console",
            "silences": "/console/silences",
            "dashboard": settings.dashboard_url,
        },
        prefixes=("/console",),
        # Notes of up to NOTE_MAX_LENGTH characters, urlencoded: 9 bytes a CJK character,
        # 12 an emoji, with room for the form's other fields.
        form_limit=FORM_LIMIT,
    )
