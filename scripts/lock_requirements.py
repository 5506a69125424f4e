"""Write deploy/requirements.lock: every package the runtime dependencies pull in, pinned.

Run in a venv holding the versions to pin (``pip install .`` in a clean one):
    python scripts/lock_requirements.py
tests/unit/test_deploy.py checks that the lock names every package this closure names.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import metadata, requires, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def closure() -> dict[str, str]:
    """Each distribution the runtime dependencies need (with their extras): name → version."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [Requirement(d) for d in declared]
    while todo:
        req = todo.pop()
        key = req.name.lower().replace("_", "-")
        for extra in {"", *req.extras}:
            if (key, extra) in done:
                continue
            done.add((key, extra))
            found[key] = f"{metadata(req.name)['Name']}=={version(req.name)}"
            for text in requires(req.name) or []:
                sub = Requirement(text)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    if extra and (sub.marker is None or "extra" not in str(sub.marker)):
                        continue  # the package's own requirements come with extra ""
                    todo.append(sub)
    return found


if __name__ == "__main__":
    pins = sorted(closure().values(), key=str.lower)
    (ROOT / "deploy" / "requirements.lock").write_text("\n".join(pins) + "\n")
    print(f"{len(pins)} pins")
