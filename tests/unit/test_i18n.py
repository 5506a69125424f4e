"""Message catalogues, language negotiation and server-side number formats."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from shared.web.i18n import (
    SHARED_MESSAGES,
    Lang,
    MessageError,
    Messages,
    assert_catalogues_match,
    format_number,
    format_percent,
    load_messages,
    negotiate,
)


def catalogue(directory: Path, en: dict[str, str], ja: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for lang, messages in (("en", en), ("ja", ja)):
        (directory / f"{lang}.json").write_text(json.dumps(messages, ensure_ascii=False))
    return directory


class TestSharedCatalogue:
    def test_both_languages_have_every_key_with_the_same_placeholders(self) -> None:
        assert_catalogues_match(SHARED_MESSAGES)

    def test_it_says_what_every_page_needs(self) -> None:
        t = load_messages().translator("ja").t
        assert t("auth.sign_in") == "ログイン"
        assert t("live.offline") == "オフライン"
        assert t("lang.name.ja") == "日本語"
        assert t("sample.n", n="1,234") == "n = 1,234"


class TestCatalogueCheck:
    def test_a_key_missing_from_one_language_fails(self, tmp_path: Path) -> None:
        directory = catalogue(tmp_path, {"a": "A", "b": "B"}, {"a": "エー"})
        with pytest.raises(AssertionError, match="'b' is missing from ja"):
            assert_catalogues_match(directory)

    def test_a_different_placeholder_fails(self, tmp_path: Path) -> None:
        directory = catalogue(tmp_path, {"n": "{count} answers"}, {"n": "回答 {n} 件"})
        with pytest.raises(AssertionError, match="different placeholders"):
            assert_catalogues_match(directory)

    def test_a_format_spec_in_a_message_is_refused(self, tmp_path: Path) -> None:
        directory = catalogue(tmp_path, {"n": "{n:.1f}"}, {"n": "{n:.1f}"})
        with pytest.raises(MessageError, match="plain"):
            assert_catalogues_match(directory)

    def test_a_missing_language_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "en.json").write_text("{}")
        with pytest.raises(MessageError, match=r"ja\.json is missing"):
            assert_catalogues_match(tmp_path)


class TestLoading:
    def test_a_service_adds_its_keys_to_the_shared_ones(self, tmp_path: Path) -> None:
        directory = catalogue(tmp_path, {"nps.title": "NPS"}, {"nps.title": "NPS（推奨度）"})
        t = load_messages(directory).translator("ja").t
        assert (t("nps.title"), t("auth.sign_out")) == ("NPS（推奨度）", "ログアウト")

    def test_a_service_cannot_redefine_a_shared_key(self, tmp_path: Path) -> None:
        directory = catalogue(tmp_path, {"auth.sign_in": "Log in"}, {"auth.sign_in": "入る"})
        with pytest.raises(MessageError, match=r"auth\.sign_in"):
            load_messages(directory)


class TestTranslator:
    messages = Messages({"en": {"hi": "Hi {name}", "only_en": "E"}, "ja": {"hi": "{name}さん"}})

    def test_placeholders_are_filled(self) -> None:
        assert self.messages.translator("ja").t("hi", name="<b>") == "<b>さん"

    def test_under_pytest_a_missing_key_raises(self) -> None:
        with pytest.raises(MessageError, match="only_en"):
            self.messages.translator("ja").t("only_en")

    def test_under_pytest_wrong_params_raise(self) -> None:
        with pytest.raises(MessageError, match="takes"):
            self.messages.translator("en").t("hi", nom="x")

    def test_in_production_a_missing_key_falls_back_to_english_then_the_key(self) -> None:
        t = self.messages.translator("ja", strict=False)
        assert (t("only_en"), t("nowhere")) == ("E", "nowhere")
        assert t("hi") == "{name}さん"


class TestNegotiate:
    @pytest.mark.parametrize(
        ("header", "choice", "expected"),
        [
            (None, None, "en"),
            ("", None, "en"),
            ("ja", None, "ja"),
            ("ja-JP,ja;q=0.9,en-US;q=0.8,en;q=0.7", None, "ja"),
            ("en-US,en;q=0.9,ja;q=0.8", None, "en"),
            ("fr-FR,fr;q=0.9,ja;q=0.5", None, "ja"),
            ("en;q=0.3, ja;q=0.8", None, "ja"),
            ("ja;q=0, en;q=0.1", None, "en"),
            ("fr, de", None, "en"),
            ("*", None, "en"),
            ("ja;q=oops", None, "en"),
            ("ja", "en", "en"),
            ("en", "ja-JP", "ja"),
            ("ja", "klingon", "ja"),
        ],
    )
    def test_language(self, header: str | None, choice: str | None, expected: Lang) -> None:
        assert negotiate(header, choice) == expected


class TestFormats:
    @pytest.mark.parametrize("lang", ["en", "ja"])
    def test_numbers_follow_cldr(self, lang: Lang) -> None:
        assert format_number(1234.5, lang, 1) == "1,234.5"
        assert format_number(Decimal("0.125"), lang, 2) == "0.13"
        assert format_number(2.5, lang) == "3"
        assert format_number(12, lang, signed=True) == "+12"
        assert format_number(-7.25, lang, 1, signed=True) == "-7.3"
        assert format_number(0.04, lang, 1, signed=True) == "0.0"
        assert format_percent(0.4235, lang, 1) == "42.4%"
        assert format_percent(1, lang) == "100%"

    def test_translator_formats_in_its_language(self) -> None:
        t = load_messages().translator("en")
        assert (t.number(98765), t.percent(0.5)) == ("98,765", "50%")
