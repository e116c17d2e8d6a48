"""The pure core stays pure: no module of it pulls in torch, asyncio or zeroconf.

What is pure is the Makefile's ``PURE`` list (also what ``make typecheck`` holds to
mypy --strict), parsed here so that the list has one truth. Every module of every
entry is imported on its own in a fresh interpreter, and the test fails naming
the module, the forbidden package and the chain of imports that brought it in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "asyncio", "zeroconf")

# Run in the fresh interpreter: import one module, then report each forbidden package
# found in sys.modules with the modules (ours and third-party) that were importing when it
# was first asked for.
PROBE = """
import importlib, json, sys
FORBIDDEN = set(json.loads(sys.argv[1]))
chains = {}

class Spy:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in FORBIDDEN and top not in chains:
            chain, f = [], sys._getframe(1)
            while f is not None:
                m = f.f_globals.get("__name__", "")
                if m and not m.startswith(("importlib", "__main__")) and chain[-1:] != [m]:
                    chain.append(m)
                f = f.f_back
            chains[top] = chain[::-1]
        return None

early = sorted({k.partition(".")[0] for k in sys.modules} & FORBIDDEN)
sys.meta_path.insert(0, Spy)
importlib.import_module(sys.argv[2])
found = sorted({k.partition(".")[0] for k in sys.modules} & FORBIDDEN)
print(json.dumps({"early": early, "found": {p: chains.get(p, []) for p in found}}))
"""


def pure_entries(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The paths of the Makefile's ``PURE`` variable (``:=``/``=``/``?=``, ``+=``, ``\\``)."""
    text = re.sub(r"\\\n", " ", makefile.read_text())
    entries: list[str] = []
    for line in text.splitlines():
        m = re.match(r"PURE\s*(\+?=|:=|\?=)(.*)$", line)
        if m is None:
            continue
        words = m.group(2).split("#", 1)[0].split()
        entries = [*entries, *words] if m.group(1) == "+=" else words
    return entries


def module_names(entry: str) -> list[str]:
    """Every module of a pure entry: a package directory (recursively) or one file."""
    path = ROOT / entry
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    names = []
    for f in files:
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


ENTRIES = pure_entries()
MODULES = [m for e in ENTRIES for m in module_names(e)]


def test_the_makefile_names_the_pure_core() -> None:
    assert "edgeci_p2p/core" in ENTRIES and "edgeci_p2p/planners" in ENTRIES, ENTRIES
    for entry in ENTRIES:
        assert "$" not in entry, f"PURE entry {entry!r}: variables are not expanded here"
        path = ROOT / entry
        assert path.is_dir() or (path.is_file() and path.suffix == ".py"), (
            f"PURE entry {entry!r} is neither a package directory nor a .py file"
        )


@pytest.mark.parametrize("module", MODULES)
def test_pure_module_imports_no_torch_asyncio_or_zeroconf(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FORBIDDEN), module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"importing {module} failed:\n{out.stderr[-2000:]}"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["early"], (
        f"{', '.join(report['early'])} imported at interpreter start-up, before {module}"
    )
    found: dict[str, list[str]] = report["found"]
    assert not found, f"pure module {module} imports " + "; ".join(
        f"{pkg} (via {' -> '.join(chain) or module})" for pkg, chain in found.items()
    )
