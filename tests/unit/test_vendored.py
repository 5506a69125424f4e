"""Vendored JavaScript is byte for byte what VENDORED.toml pins, licence included."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "shared/web/static/vendor/VENDORED.toml"


def vendor_script() -> ModuleType:
    return load_script(ROOT / "scripts/vendor.py")


VENDOR = vendor_script()
PACKAGES: list[dict[str, Any]] = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))["package"]
LISTED = [(p, f) for p in PACKAGES for f in p["file"]]


class TestVendoredFiles:
    @pytest.mark.parametrize(
        ("package", "entry"), LISTED, ids=[f"{p['name']}/{f['path']}" for p, f in LISTED]
    )
    def test_each_file_has_its_pinned_sha256(
        self, package: dict[str, Any], entry: dict[str, str]
    ) -> None:
        path = ROOT / package["directory"] / entry["path"]
        assert path.is_file(), f"{path} is listed but missing; run scripts/vendor.py"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], (
            f"{path.relative_to(ROOT)} is not the vendored file; run scripts/vendor.py --check"
        )

    @pytest.mark.parametrize("package", PACKAGES, ids=[p["name"] for p in PACKAGES])
    def test_each_package_keeps_its_licence_next_to_it(self, package: dict[str, Any]) -> None:
        assert "LICENSE" in {f["path"] for f in package["file"]}
        assert (ROOT / package["directory"] / "LICENSE").is_file()

    @pytest.mark.parametrize("package", PACKAGES, ids=[p["name"] for p in PACKAGES])
    def test_each_package_is_pinned_to_an_npm_tarball(self, package: dict[str, Any]) -> None:
        name, version = package["name"], package["version"]
        assert Path(package["directory"]).name == f"{name}-{version}"
        assert package["tarball"] == f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
        assert package["integrity"].startswith("sha512-")

    def test_no_file_in_a_vendor_directory_is_unlisted(self) -> None:
        listed = {ROOT / p["directory"] / f["path"] for p, f in LISTED} | {MANIFEST}
        present = {
            path
            for vendor_dir in VENDOR.VENDOR_DIRS
            for path in (ROOT / vendor_dir).rglob("*")
            if path.is_file()
        }
        assert present - listed == set(), "unlisted vendored files: add them to scripts/vendor.py"

    def test_the_manifest_is_what_the_script_pins(self) -> None:
        pinned = {(p.name, p.version, p.directory) for p in VENDOR.PACKAGES}
        assert {(p["name"], p["version"], p["directory"]) for p in PACKAGES} == pinned, (
            "a pin in scripts/vendor.py changed: run it to fetch and rewrite VENDORED.toml"
        )
