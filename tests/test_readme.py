"""The README's commands stay true: a renamed flag or subcommand fails here.

Every ``edgeci`` / ``edgeci-peer`` command line in README.md's shell blocks (and in
docs/deploy.md's, and the systemd unit's ``ExecStart``) is parsed by the real argparse
parsers. Blocks marked ``# needs real devices`` are only parsed; every other block must
run here, and does: ``make`` targets must exist, and the loopback block's peers are
started in-process from their parsed flags, its ``edgeci`` commands are run against
them, and so is the Python example.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from edgeci_p2p import cli, peer_cli
from edgeci_p2p.aio.daemon import PeerDaemon
from edgeci_p2p.nn.images import sample_image_path
from tests.daemons import LOOPBACK_MDNS, stop_all, wait_connected

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEPLOY = ROOT / "docs" / "deploy.md"
UNIT = ROOT / "deploy" / "edgeci-peer.service"
DEVICES = "# needs real devices"
"""The mark (a comment line in a shell block) of commands that need real devices."""
MAX_LINES = 150
PHOTO = "photo.jpg"
"""The README's image; the tests send the sample photo in its place."""

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "edgeci": cli.build_parser,
    "edgeci-peer": peer_cli.build_parser,
}


@dataclass(frozen=True)
class Block:
    lang: str
    section: str
    first_line: int
    text: str

    @property
    def needs_devices(self) -> bool:
        return any(line.strip().startswith(DEVICES) for line in self.text.splitlines())

    def commands(self) -> list[list[str]]:
        """Each command of a shell block as argv (continuations joined, ``&&`` split,
        comments and a trailing ``&`` dropped)."""
        joined = self.text.replace("\\\n", " ")
        out: list[list[str]] = []
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                argv = [w for w in words[:cut] if w != "&"]
                if argv:
                    out.append(argv)
                words = words[cut + 1 :]
        return out


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the ``##`` section each is in."""
    found: list[Block] = []
    section, lang, start, body = "", None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if lang is None and line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n, []
            else:
                found.append(Block(lang, section, start, "\n".join(body) + "\n"))
                lang = None
        elif lang is not None:
            body.append(line)
    return found


def shell_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in ("sh", "bash", "shell")]


def program(argv: list[str]) -> str:
    return Path(argv[0]).name


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by its program's real parser; a parse error fails the test."""
    parser = PARSERS[program(argv)]()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{shlex.join(argv)!r} does not parse: {err.getvalue().strip()}")


def inline_commands(path: Path) -> list[list[str]]:
    """``edgeci`` commands with flags written inline (in backticks, perhaps across a line
    break) outside the code blocks."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    spans = (" ".join(m.split()) for m in re.findall(r"`([^`]+)`", text))
    return [
        argv
        for argv in (shlex.split(x) for x in spans if " --" in x)
        if argv and program(argv) in PARSERS
    ]


def ours(path: Path) -> list[list[str]]:
    in_blocks = [c for b in shell_blocks(path) for c in b.commands() if program(c) in PARSERS]
    return in_blocks + inline_commands(path)


def subparser(words: list[str]) -> argparse.ArgumentParser:
    """The parser of ``edgeci SUB [SUB2]`` (or ``edgeci-peer``'s)."""
    parser = PARSERS[words[0]]()
    for w in words[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert subs and w in subs[0].choices, f"no subcommand {w!r} in {words}"
        parser = subs[0].choices[w]
    return parser


def table_rows(path: Path) -> list[tuple[list[str], list[str]]]:
    """The CLI table's rows: (the command's words, the flags its last column names)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if line.startswith("| `edgeci") and len(cells) >= 3:
            words = [w for w in cells[0].strip("`").split() if w.islower()]
            rows.append((words, re.findall(r"--[a-z][a-z-]*", cells[-1])))
    return rows


# ---- the README's shape ---------------------------------------------------------------------


def test_readme_is_short_and_has_its_runnable_parts() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    sections = {b.section for b in shell_blocks(README)}
    assert "Quick start" in sections
    assert [b for b in blocks(README) if b.lang == "python"], "no Python example"
    unmarked = [b for b in shell_blocks(README) if not b.needs_devices]
    assert any(program(c) == "edgeci-peer" for b in unmarked for c in b.commands())


def test_the_parser_check_catches_a_renamed_flag() -> None:
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        parse(["edgeci", "infer", "--peer", "h:1", "--no-such-flag", PHOTO])
    block = Block("sh", "", 1, "a --x 1 \\\n  --y 2 && b &\n# c\n")
    assert block.commands() == [["a", "--x", "1", "--y", "2"], ["b"]]


# ---- every command parses -------------------------------------------------------------------


@pytest.mark.parametrize("doc", [README, DEPLOY], ids=lambda p: p.name)
def test_every_edgeci_command_parses(doc: Path) -> None:
    commands = ours(doc)
    assert commands, f"no edgeci command found in {doc.name}"
    for argv in commands:
        parse(argv)


def test_the_cli_table_names_real_commands_and_flags() -> None:
    rows = table_rows(README)
    assert {" ".join(w) for w, _ in rows} >= {"edgeci-peer", "edgeci infer", "edgeci peers"}
    for words, flags in rows:
        known = {o for a in subparser(words)._actions for o in a.option_strings}
        assert flags, f"no flags found for {' '.join(words)}"
        missing = set(flags) - known
        assert not missing, f"{' '.join(words)} has no {sorted(missing)}"


def test_unmarked_blocks_hold_only_commands_this_test_runs() -> None:
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    for b in shell_blocks(README):
        if b.needs_devices:
            continue
        for argv in b.commands():
            where = f"README.md line {b.first_line}: {shlex.join(argv)!r}"
            if program(argv) == "make":
                assert set(argv[1:]) <= targets, f"{where}: no such make target"
            else:
                assert program(argv) in PARSERS, (
                    f"{where} is neither run by this test nor marked {DEVICES!r}"
                )


# ---- the loopback block and the Python example, run --------------------------------------


def _run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    return rc, out.getvalue()


async def _loopback(tmp_path: Path) -> None:
    block = next(
        b
        for b in shell_blocks(README)
        if not b.needs_devices and any(program(c) == "edgeci-peer" for c in b.commands())
    )
    commands = block.commands()
    daemons: list[PeerDaemon] = []
    renamed: dict[str, str] = {PHOTO: str(sample_image_path())}
    try:
        for i, argv in enumerate(c for c in commands if program(c) == "edgeci-peer"):
            config = peer_cli.config_from_args(parse(argv))
            # Any free port and a fresh state dir: the README's may be taken here.
            d = PeerDaemon(replace(config, port=0, state_dir=tmp_path / f"p{i}"))
            daemons.append(d)
            await d.start()
            renamed[f"{config.host}:{config.port}"] = f"{config.host}:{d.port}"
        await wait_connected(daemons)  # over mDNS on 127.0.0.1, as the README says
        for argv in (c for c in commands if program(c) == "edgeci"):
            local = [renamed.get(w, w) for w in argv[1:]]
            rc, out = await asyncio.to_thread(_run_cli, local)
            assert rc == 0, f"{shlex.join(argv)!r} failed: {out}"
        example = next(b for b in blocks(README) if b.lang == "python").text
        for old, new in renamed.items():
            example = example.replace(f'"{old}"', repr(new))
        out = io.StringIO()

        def run_example() -> None:
            with contextlib.redirect_stdout(out):
                exec(compile(example, "README.md (Python example)", "exec"), {})

        await asyncio.to_thread(run_example)
        assert "max |diff|" in out.getvalue(), out.getvalue()
    finally:
        await stop_all(daemons)


@pytest.mark.timeout(120)
@LOOPBACK_MDNS
def test_loopback_block_and_python_example_run(tmp_path: Path) -> None:
    asyncio.run(_loopback(tmp_path))


# ---- the systemd unit -----------------------------------------------------------------------


def exec_start(unit: str) -> list[str]:
    joined = unit.replace("\\\n", " ")
    line = next(x for x in joined.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_unit_starts_the_peer_with_flags_that_parse() -> None:
    argv = exec_start(UNIT.read_text())
    assert program(argv) == "edgeci-peer"
    args = parse(argv)
    assert args.state_dir == Path("/var/lib/edgeci")
    assert "StateDirectory=edgeci" in UNIT.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = UNIT.read_text()
    binary = exec_start(unit)[0]
    # verify insists that the binary exists: point it at this environment's peer.
    here = Path(sys.executable).parent / "edgeci-peer"
    if not here.is_file():
        pytest.skip(f"no {here} to stand for {binary}")
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace(binary, str(here)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    complaints = [x for x in (r.stdout + r.stderr).splitlines() if UNIT.name in x]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr
