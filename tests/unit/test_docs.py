"""The README stays true to the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import known_env_names, markdown_table

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


class TestReadme:
    def test_the_configuration_table_is_what_cxloop_config_prints(self) -> None:
        documented = set(re.findall(r"^\| `(CXLOOP_[A-Z0-9_]+)` \|", README, flags=re.MULTILINE))
        assert documented == known_env_names()
        assert markdown_table() in README, "regenerate it with `cxloop config`"

    def test_it_opens_with_the_two_commands(self) -> None:
        first_block = README.split("```sh", 1)[1].split("```", 1)[0]
        assert "./cxloop up" in first_block
        assert "./cxloop test" in first_block
