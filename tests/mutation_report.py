"""The killed share of ``make mutation`` per module, read from mutmut 3's ``mutants/*.meta``.

Run from the repository root after ``mutmut run``. A mutant counts as caught when a test
failed on it (mutmut's "killed") or it made the tests run past their timeout; survivors,
mutants no selected test reaches, and unchecked ones count against the module (the
share among the mutants already run is shown beside it). Exits 1
when a module is below ``--min`` (85 % by default), and lists every survivor by name
(``mutmut show NAME`` prints its diff; docs/testing.md says why each known one is
harmless).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CAUGHT = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout"}
"""mutmut's exit codes (mutmut/stats.py) that mean the tests noticed the mutant."""
SURVIVED = 0


def module_stats(meta: Path) -> tuple[int, int, int, list[str]]:
    """(caught, checked, total, names of the checked ones not caught) of one file."""
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    caught = sum(1 for c in codes.values() if c in CAUGHT)
    checked = sum(1 for c in codes.values() if c is not None)
    missed = sorted(k for k, c in codes.items() if c is not None and c not in CAUGHT)
    return caught, checked, len(codes), missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("modules", nargs="+", help="the mutated source files")
    ap.add_argument("--min", type=float, default=85.0, help="lowest killed share, percent")
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    args = ap.parse_args(argv)
    ok = True
    rows = []
    survivors: list[tuple[str, str, int | None]] = []
    for module in args.modules:
        meta = args.mutants / f"{module}.meta"
        if not meta.exists():
            print(f"{module}: no results in {meta} (run mutmut first)", file=sys.stderr)
            ok = False
            continue
        caught, checked, total, missed = module_stats(meta)
        share = 100.0 * caught / total if total else 100.0
        ok &= share >= args.min
        rows.append((module, caught, checked, total, share))
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        survivors += [(module, name, codes[name]) for name in missed]
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'module':<{width}}  killed/total  share   (of those checked)")
    for module, caught, checked, total, share in rows:
        flag = "" if share >= args.min else f"  < {args.min:g} %"
        of_checked = 100.0 * caught / checked if checked else 0.0
        unchecked = f", {total - checked} not run yet" if checked < total else ""
        print(
            f"{module:<{width}}  {caught:>6}/{total:<5}  {share:5.1f} %"
            f"  ({caught}/{checked} = {of_checked:.1f} %{unchecked}){flag}"
        )
    if survivors:
        print(f"\nnot killed ({len(survivors)}; `mutmut show NAME` for the diff):")
        for _module, name, code in survivors:
            why = "survived" if code == SURVIVED else f"exit code {code}"
            print(f"  {name}  ({why})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
