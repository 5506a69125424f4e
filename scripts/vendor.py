"""Fetch the vendored JavaScript from the npm registry, check it, and write VENDORED.toml.

    python scripts/vendor.py           fetch every pinned package, verify, write files + manifest
    python scripts/vendor.py --check   fetch and verify only: the files on disk must be the
                                       tarball's bytes and the manifest must match (exit 1 if not)

To change a version, edit its pin in PACKAGES and run the script: the old directory is
removed, the new one written, and the manifest rewritten. Pages name the directory
(`vendor/uplot-<version>/`), so update their references in the same commit.

Each tarball is checked against the registry's `dist.integrity` (sha512, as `npm pack`
does) before a byte of it is used. Only the standard library is needed, so this runs on a
machine without npm.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "shared/web/static/vendor/VENDORED.toml"
# Every directory that holds vendored files; the unit test refuses any file in them that
# the manifest does not list.
VENDOR_DIRS = ("shared/web/static/vendor", "tests/vendor")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    into: str  # parent directory, relative to the repository; the package gets <name>-<version>
    files: dict[str, str]  # path in the tarball -> file name in our directory
    purpose: str

    @property
    def directory(self) -> str:
        return f"{self.into}/{self.name}-{self.version}"


PACKAGES = (
    Package(
        name="uplot",
        version="1.6.32",
        into="shared/web/static/vendor",
        files={
            "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uPlot.min.css",
            "package/LICENSE": "LICENSE",
        },
        purpose="time-series charts on the dashboard (served)",
    ),
    Package(
        name="axe-core",
        version="4.14.1",
        into="tests/vendor",
        files={
            "package/axe.min.js": "axe.min.js",
            "package/LICENSE": "LICENSE",
            "package/LICENSE-3RD-PARTY.txt": "LICENSE-3RD-PARTY.txt",
        },
        purpose="accessibility checks in browser tests (never served)",
    ),
)


def _get(url: str) -> bytes:
    if not url.startswith(REGISTRY + "/"):
        raise SystemExit(f"vendor: refusing to fetch {url}: not on {REGISTRY}")
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (checked above)
        body: bytes = response.read()
    return body


def integrity_of(data: bytes) -> str:
    """The npm `dist.integrity` string (SRI, sha512) of a tarball's bytes."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def fetch(package: Package) -> tuple[str, str, dict[str, bytes]]:
    """Download a pinned tarball, verify it, and return (url, integrity, {name: bytes})."""
    meta = json.loads(_get(f"{REGISTRY}/{package.name}/{package.version}"))
    url, integrity = meta["dist"]["tarball"], meta["dist"]["integrity"]
    tarball = _get(url)
    if integrity_of(tarball) != integrity:
        raise SystemExit(f"vendor: {url} does not match the registry's integrity {integrity}")
    contents: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member, name in package.files.items():
            extracted = archive.extractfile(member)
            if extracted is None:
                raise SystemExit(f"vendor: {member} is not a file in {url}")
            contents[name] = extracted.read()
    return url, integrity, contents


def _quote(value: str) -> str:
    # Every value here is ASCII without control characters; JSON quoting is valid TOML.
    return json.dumps(value, ensure_ascii=True)


def manifest_text(fetched: list[tuple[Package, str, str, dict[str, bytes]]]) -> str:
    lines = [
        "# Vendored third-party files. Written by scripts/vendor.py; do not edit by hand.",
        "# tests/unit/test_vendored.py checks every file's sha256 against this list.",
        "",
    ]
    for package, url, integrity, contents in fetched:
        lines += [
            "[[package]]",
            f"name = {_quote(package.name)}",
            f"version = {_quote(package.version)}",
            f"purpose = {_quote(package.purpose)}",
            f"tarball = {_quote(url)}",
            f"integrity = {_quote(integrity)}",
            f"directory = {_quote(package.directory)}",
            "",
        ]
        for member, name in package.files.items():
            lines += [
                "[[package.file]]",
                f"path = {_quote(name)}",
                f"from = {_quote(member)}",
                f"sha256 = {_quote(hashlib.sha256(contents[name]).hexdigest())}",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="verify only; write nothing")
    args = parser.parse_args(argv)

    fetched = [(package, *fetch(package)) for package in PACKAGES]
    text = manifest_text(fetched)
    if args.check:
        problems = []
        for package, _url, _integrity, contents in fetched:
            for name, data in contents.items():
                path = ROOT / package.directory / name
                if not path.is_file() or path.read_bytes() != data:
                    problems.append(f"{path.relative_to(ROOT)} differs from the npm tarball")
        if not MANIFEST.is_file() or MANIFEST.read_text(encoding="utf-8") != text:
            problems.append(f"{MANIFEST.relative_to(ROOT)} is stale; run scripts/vendor.py")
        for problem in problems:
            print(f"vendor: {problem}", file=sys.stderr)
        if not problems:
            print("vendor: every vendored file is the npm registry's, byte for byte")
        return 1 if problems else 0

    pinned = {package.directory for package in PACKAGES}
    for vendor_dir in VENDOR_DIRS:
        for old in (ROOT / vendor_dir).glob("*-*"):
            if old.is_dir() and str(old.relative_to(ROOT)) not in pinned:
                print(f"vendor: removing {old.relative_to(ROOT)}")
                shutil.rmtree(old)
    for package, url, _integrity, contents in fetched:
        directory = ROOT / package.directory
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            (directory / name).write_bytes(data)
        print(f"vendor: {package.name}@{package.version} from {url} -> {package.directory}")
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
