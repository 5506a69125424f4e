"""(interim; replaced by the full catalogue module)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LANGUAGES = ("en", "ja")


def negotiate(accept_language: str | None, chosen: str | None) -> str:
    if chosen in LANGUAGES:
        return chosen
    best, best_q = "en", 0.0
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


class Translator:
    def __init__(self, messages: dict[str, str]) -> None:
        self.messages = messages

    def t(self, key: str, **params: Any) -> str:
        return self.messages[key].format(**params)


class Formatter:
    def __init__(self, lang: str) -> None:
        self.lang = lang


def load_catalogues(dirs: list[Path]) -> dict[str, Translator]:
    out = {}
    for lang in LANGUAGES:
        merged: dict[str, str] = {}
        for d in dirs:
            f = d / f"{lang}.json"
            if f.exists():
                merged |= json.loads(f.read_text("utf-8"))
        out[lang] = Translator(merged)
    return out
