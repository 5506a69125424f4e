"""Message catalogues, language negotiation and number formats for the pages.

Every string a page shows comes from a catalogue: `messages/en.json` and `messages/ja.json`,
flat JSON objects of dotted keys to messages with `{name}` placeholders::

    {"sample.insufficient": "Insufficient sample (n = {n}, at least {min} needed)"}

The shared catalogue (`shared/web/messages/`) holds what every page says (sign in, language
names, live/offline, empty and error states, pagination); a service adds its own directory
(`services/scorer/pages/messages/`). A key belongs to one of them: a service key that
repeats a shared one is refused at load, so nothing is silently overridden.

    messages = load_messages(Path(__file__).parent / "messages")
    lang = negotiate(request.headers.get("accept-language"), request.cookies.get("lang"))
    t = messages.translator(lang).t
    t("sample.insufficient", n=12, min=30)

Placeholders take plain values: format numbers first (`format_number`), so the catalogue
never holds a format spec. Under pytest a missing key or a wrong placeholder raises
`MessageError`; in production it logs a warning and falls back to English, then to the key.
`assert_catalogues_match(directory)` is the unit-test check that both languages have the
same keys with the same placeholders.
"""

from __future__ import annotations

import copy
import json
import logging
import string
import sys
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Final, Literal, get_args

from babel.core import Locale
from babel.numbers import NumberPattern, parse_pattern
from babel.numbers import format_percent as babel_format_percent

from shared.money import exponent

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "SHARED_MESSAGES",
    "Lang",
    "MessageError",
    "Messages",
    "Translator",
    "assert_catalogues_match",
    "format_money",
    "format_number",
    "format_percent",
    "load_catalogue",
    "load_messages",
    "negotiate",
    "placeholders",
]

logger = logging.getLogger(__name__)

Lang = Literal["en", "ja"]
LANGUAGES: Final[tuple[Lang, ...]] = get_args(Lang)
DEFAULT_LANGUAGE: Final[Lang] = "en"
SHARED_MESSAGES: Final = Path(__file__).with_name("messages")

Catalogue = dict[str, str]


class MessageError(LookupError):
    """A catalogue is malformed, or a message was asked for with a missing key or params."""


# ---- Loading -------------------------------------------------------------------------------


def placeholders(message: str) -> frozenset[str]:
    """The `{name}` placeholders of a message; raises MessageError for any other field."""
    names = set()
    try:
        parsed = list(string.Formatter().parse(message))
    except ValueError as error:
        raise MessageError(f"unbalanced braces in {message!r}: {error}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise MessageError(
                f"placeholder {{{field}}} in {message!r}: use a plain {{name}} "
                "(format numbers before passing them)"
            )
        names.add(field)
    return frozenset(names)


def load_catalogue(directory: Path) -> dict[Lang, Catalogue]:
    """Read `<directory>/en.json` and `<directory>/ja.json` (flat objects of key -> message)."""
    catalogues: dict[Lang, Catalogue] = {}
    for lang in LANGUAGES:
        path = directory / f"{lang}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MessageError(f"{path} is missing: every language needs a catalogue") from None
        except json.JSONDecodeError as error:
            raise MessageError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise MessageError(f"{path} must hold one JSON object of key -> message")
        for key, message in data.items():
            if not isinstance(message, str):
                raise MessageError(f"{path}: {key!r} must be a string, not {type(message)}")
            placeholders(message)
        catalogues[lang] = data
    return catalogues


def load_messages(*directories: Path, shared: bool = True) -> Messages:
    """The shared catalogue (unless `shared=False`) merged with each directory's.

    Raises MessageError if two of them define the same key.
    """
    sources = ([SHARED_MESSAGES] if shared else []) + list(directories)
    merged: dict[Lang, Catalogue] = {lang: {} for lang in LANGUAGES}
    origin: dict[str, Path] = {}
    for directory in sources:
        for lang, catalogue in load_catalogue(directory).items():
            for key, message in catalogue.items():
                if key in merged[lang]:
                    raise MessageError(
                        f"{key!r} is defined in both {origin[key]} and {directory}; "
                        "rename one of them"
                    )
                merged[lang][key] = message
                origin[key] = directory
    return Messages(merged)


# ---- Negotiation ---------------------------------------------------------------------------


def _supported(tag: str) -> Lang | None:
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    for lang in LANGUAGES:
        if primary == lang:
            return lang
    return None


def negotiate(accept_language: str | None, choice: str | None = None) -> Lang:
    """The language to answer in: "ja" or "en".

    `choice` is the viewer's explicit pick (a `lang` cookie or query parameter) and wins
    when it names a supported language ("ja", "ja-JP", "en-US"). Otherwise the supported
    language the Accept-Language header prefers most (by q-value, then by order) is chosen;
    `q=0` excludes one. English when neither says anything usable.
    """
    if choice:
        picked = _supported(choice)
        if picked is not None:
            return picked
    best: tuple[float, int, Lang] | None = None
    for position, item in enumerate((accept_language or "").split(",")):
        tag, *params = item.split(";")
        lang = _supported(tag)
        if lang is None:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if not 0 < quality <= 1:
            continue
        candidate = (-quality, position, lang)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best is not None else DEFAULT_LANGUAGE


# ---- Formats -------------------------------------------------------------------------------


def _pattern(decimals: int, signed: bool) -> str:
    if decimals < 0:
        raise ValueError("decimals must be 0 or more")
    body = "#,##0" + ("." + "0" * decimals if decimals else "")
    return f"+{body};-{body}" if signed else body


@cache
def _number_pattern(decimals: int, signed: bool) -> NumberPattern:
    return parse_pattern(_pattern(decimals, signed))


@cache
def _locale(lang: str) -> Locale:
    return Locale.parse(lang)


def format_number(
    value: int | float | Decimal, lang: Lang, decimals: int = 0, *, signed: bool = False
) -> str:
    """A number in the language's CLDR format with exactly `decimals` fraction digits.

    Rounds half away from zero, as the browser's Intl.NumberFormat does, so a value the
    page re-formats in JavaScript keeps its text. `signed=True` writes "+12" (NPS deltas).
    """
    with localcontext() as context:
        context.rounding = ROUND_HALF_UP
        # What format_decimal does, with the pattern and locale parsed once (a dashboard
        # formats hundreds of numbers a page).
        text = _number_pattern(decimals, signed).apply(value, _locale(lang))
    # Intl's signDisplay "exceptZero" writes a zero without a sign; so do we.
    return _zero(decimals) if signed and text.lstrip("+-") == _zero(decimals) else text


def _zero(decimals: int) -> str:
    return "0" + ("." + "0" * decimals if decimals else "")


def format_money(amount: Decimal | str, currency: str, lang: str, digits: int | None = None) -> str:
    """An amount in the language's CLDR currency format with ISO 4217's number of decimals
    (Babel's own CLDR digits differ for some currencies: IQD has 3 in ISO, 0 in CLDR):
    "¥120,000", "$19.90", "IQD999.600"; "￥120,000" in ja. ``digits`` overrides ISO's, for
    an amount stored with its own (a currency the table may no longer have)."""
    digits = exponent(currency) if digits is None else digits
    pattern = copy.copy(_locale(lang).currency_formats["standard"])
    pattern.frac_prec = (digits, digits)
    with localcontext() as context:
        context.rounding = ROUND_HALF_UP
        return str(
            pattern.apply(Decimal(amount), _locale(lang), currency=currency, currency_digits=False)
        )


def format_percent(value: int | float | Decimal, lang: Lang, decimals: int = 0) -> str:
    """A fraction as a percentage in the language's CLDR format: 0.423 -> "42%"."""
    body = "#,##0" + ("." + "0" * decimals if decimals else "")
    with localcontext() as context:
        context.rounding = ROUND_HALF_UP
        return babel_format_percent(value, format=body + "%", locale=lang)


# ---- Translation ---------------------------------------------------------------------------


def _under_test() -> bool:
    return "pytest" in sys.modules


class Translator:
    """Messages in one language. `t(key, **params)`; also callable as `translator(key, ...)`.

    Strict (the default under pytest) raises MessageError for a missing key or when the
    params differ from the message's placeholders. Otherwise it logs a warning and falls
    back to English, then to the key itself, and leaves an unfilled placeholder as written.
    """

    def __init__(
        self,
        lang: Lang,
        messages: Mapping[str, str],
        *,
        fallback: Mapping[str, str] | None = None,
        strict: bool | None = None,
    ) -> None:
        self.lang: Final = lang
        self._messages = messages
        self._fallback = fallback or {}
        self.strict: Final = _under_test() if strict is None else strict

    def t(self, key: str, /, **params: object) -> str:
        """The message for `key` with its `{name}` placeholders filled from `params`."""
        message = self._messages.get(key)
        if message is None:
            if self.strict:
                raise MessageError(f"no message {key!r} in the {self.lang} catalogue")
            logger.warning("no message %s in the %s catalogue", key, self.lang)
            message = self._fallback.get(key, key)
        wanted = placeholders(message)
        if wanted != params.keys():
            if self.strict:
                raise MessageError(f"{key!r} takes {sorted(wanted)}, was given {sorted(params)}")
            logger.warning("message %s was given the wrong placeholders", key)
            return message.format_map(_Unfilled(params))
        return message.format_map(params)

    __call__ = t

    def has(self, key: str) -> bool:
        return key in self._messages

    def number(
        self, value: int | float | Decimal, decimals: int = 0, *, signed: bool = False
    ) -> str:
        """`format_number` in this translator's language."""
        return format_number(value, self.lang, decimals, signed=signed)

    def percent(self, value: int | float | Decimal, decimals: int = 0) -> str:
        """`format_percent` in this translator's language."""
        return format_percent(value, self.lang, decimals)


class _Unfilled(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Messages:
    """The catalogues of every language, merged; hands out a Translator per language."""

    def __init__(self, catalogues: Mapping[Lang, Mapping[str, str]]) -> None:
        self.catalogues: Final = {lang: dict(catalogues.get(lang, {})) for lang in LANGUAGES}

    def translator(self, lang: Lang, *, strict: bool | None = None) -> Translator:
        return Translator(
            lang,
            self.catalogues[lang],
            fallback=self.catalogues[DEFAULT_LANGUAGE],
            strict=strict,
        )


# ---- The test helper ----------------------------------------------------------------------


def assert_catalogues_match(directory: Path) -> None:
    """Fail (AssertionError) unless every language in `directory` has the same keys, and each
    key the same placeholders. Also fails on a catalogue that does not load."""
    catalogues = load_catalogue(directory)
    problems: list[str] = []
    all_keys = set().union(*(catalogue.keys() for catalogue in catalogues.values()))
    for key in sorted(all_keys):
        missing = [lang for lang in LANGUAGES if key not in catalogues[lang]]
        if missing:
            problems.append(f"{key!r} is missing from {', '.join(missing)}")
            continue
        found = {lang: placeholders(catalogues[lang][key]) for lang in LANGUAGES}
        if len(set(found.values())) > 1:
            shown = "; ".join(f"{lang}: {sorted(names)}" for lang, names in found.items())
            problems.append(f"{key!r} has different placeholders ({shown})")
        empty = [lang for lang in LANGUAGES if not catalogues[lang][key].strip()]
        if empty:
            problems.append(f"{key!r} is empty in {', '.join(empty)}")
    assert not problems, f"catalogues in {directory} disagree:\n  " + "\n  ".join(problems)
