"""Reading survey answers out of SMS replies as people really write them, and answering.

"9", " 10 ", "9 - great service", "nine", "10/10", "I'd say 8", "９", "九", "十点" and
"8です、対応が早かった" all carry a score; what is left over becomes the comment.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from xml.sax.saxutils import escape

_WORDS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_KANJI: Final = {
    "〇": 0, "零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5,
    "六": 6, "七": 7, "八": 8, "九": 9, "十": 10,
}  # fmt: skip
_OUT_OF = re.compile(
    r"(?<!\d)(\d{1,2})\s*(?:/|out of|of|点中|／)\s*(?:10|5|7)(?!\d)", re.IGNORECASE
)
_NUMBER = re.compile(r"(?<![\d.\-])(\d{1,2})(?![\d.])")
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# A lone kanji numeral, not part of a longer word such as 一番 ("the best") or 十分 ("enough").
_KANJI_NUMBER = re.compile(r"(?<![一-龯])([〇零一二三四五六七八九十])(?:点)?(?![一-龯])")
_SEPARATORS = " \t\r\n-–—:;,.!?、。!?:・/()（）「」"


class Keyword(StrEnum):
    """What a reply asks of us besides answering."""

    STOP = "stop"
    START = "start"
    HELP = "help"


_STOP_WORDS = ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "停止", "配信停止")
_KEYWORDS: Final = {
    **dict.fromkeys(_STOP_WORDS, Keyword.STOP),
    **dict.fromkeys(("start", "unstop", "再開", "配信再開"), Keyword.START),
    **dict.fromkeys(("help", "info", "ヘルプ"), Keyword.HELP),
}


def normalise(text: str) -> str:
    """Fold full-width forms (９, ＳＴＯＰ) to their plain forms and trim."""
    return unicodedata.normalize("NFKC", text).strip()


def keyword(text: str) -> Keyword | None:
    """Return the carrier keyword a reply is, if the whole reply is one."""
    word = normalise(text).strip(_SEPARATORS).lower()
    return _KEYWORDS.get(word)


@dataclass(frozen=True)
class ParsedReply:
    """A score read from a reply, and the rest of it as a comment."""

    score: int
    comment: str | None


def parse_reply(text: str, low: int, high: int) -> ParsedReply | None:
    """Return the score in ``text`` on the scale ``low``–``high``, or None if there is none."""
    plain = normalise(text)
    for pattern in (_OUT_OF, _NUMBER, _WORD, _KANJI_NUMBER):
        match = pattern.search(plain)
        if match is None:
            continue
        token = match.group(1)
        value = int(token) if token.isdigit() else _WORDS.get(token.lower(), _KANJI.get(token, -1))
        if not low <= value <= high:
            return None
        after = plain[match.end() :]
        # 点 is the Japanese unit of a score ("7点"): part of the answer, not the comment.
        after = after.removeprefix("点")
        rest = (plain[: match.start()] + " " + after).strip(_SEPARATORS)
        rest = re.sub(r"^(?:i'?d say|i would say|i give( it)?|my score is|score)\b", "", rest,
                      flags=re.IGNORECASE).strip(_SEPARATORS)  # fmt: skip
        return ParsedReply(value, _comment(rest))
    return None


def _comment(rest: str) -> str | None:
    filler = {"", "です", "かな", "くらい", "ぐらい", "ですね"}
    return None if rest in filler else rest


_TEXTS: Final = {
    "thanks": {"en": "Thank you for your feedback!", "ja": "ご回答ありがとうございました。"},
    "reask": {
        "en": "Sorry, we didn't catch that. Please reply with a number from {low} to {high}.",
        "ja": "恐れ入りますが、{low}から{high}までの数字でご返信ください。",
    },
    "help": {
        "en": "Reply with a number to answer our survey. Reply STOP to stop receiving surveys.",
        "ja": "アンケートには数字でご返信ください。"
        "配信停止をご希望の場合は STOP と返信してください。",
    },
    "resubscribed": {
        "en": "You will receive our surveys again. Reply STOP to opt out.",
        "ja": "アンケートの配信を再開しました。停止するには STOP と返信してください。",
    },
    "no_survey": {
        "en": "Thank you for your message. There is no open survey for this number.",
        "ja": "メッセージありがとうございます。この番号に回答受付中のアンケートはありません。",
    },
}


def language(locale: str | None) -> str:
    """Return ``ja`` for Japanese locales and ``en`` otherwise."""
    return "ja" if (locale or "").lower().startswith("ja") else "en"


def text(name: str, locale: str | None, **values: object) -> str:
    """Return the reply ``name`` in the language of ``locale``."""
    return _TEXTS[name][language(locale)].format(**values)


def twiml(message: str | None = None) -> str:
    """Return a TwiML document replying ``message``, or replying nothing."""
    body = f"<Message>{escape(message)}</Message>" if message else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'
