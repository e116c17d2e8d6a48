"""docs/protocol.md stays in step with the code: every type, field and code is specified."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeci_p2p.wire import framing, messages
from edgeci_p2p.wire.errors import ErrorCode
from edgeci_p2p.wire.messages import Ping

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize("kind", sorted(messages.MESSAGE_TYPES))
def test_every_message_and_field_is_documented(kind: str) -> None:
    assert f"**`{kind}`**" in DOC, f"message {kind} has no section"
    cls = messages.MESSAGE_TYPES[kind]
    for name in cls._fields():
        assert re.search(rf"\| `{name}`( \?)? \|", DOC), f"{kind}.{name} is not in a field table"


def first_table_after(marker: str) -> list[str]:
    """The field names (first column) of the first table after ``marker`` in the doc."""
    rest = DOC.split(marker, 1)[1].splitlines()
    start = next(i for i, line in enumerate(rest) if line.startswith("|"))
    names = []
    for line in rest[start + 2 :]:  # past the header and its rule
        if not line.startswith("|"):
            break
        names.append(re.sub(r"[`? ]", "", line.split("|")[1]))
    return names


@pytest.mark.parametrize("kind", sorted(messages.MESSAGE_TYPES))
def test_the_documented_fields_all_exist(kind: str) -> None:
    # The other direction: a field renamed in the code must not linger in the doc.
    documented = first_table_after(f"**`{kind}`**")
    assert set(documented) == set(messages.MESSAGE_TYPES[kind]._fields())


def test_the_work_item_table_is_the_work_item_record() -> None:
    assert first_table_after("`item` (a work item") == list(messages.WorkItem._fields())


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    fatal = "yes" if code.fatal else "no"
    assert f"| {code.value} | `{code.name}` | {fatal} |" in DOC


def test_the_documented_ping_frame_is_what_the_encoder_writes() -> None:
    block = DOC.split("Example: a `ping`")[1].split("```")[1]
    # The hex tokens left of each line's comment column.
    hex_bytes = ""
    for line in block.strip().splitlines():
        code = re.split(r"\s{3,}", line.strip())[0]
        hex_bytes += "".join(t for t in code.split() if re.fullmatch(r"[0-9a-f]+", t))
    frame = bytes.fromhex(hex_bytes)
    assert frame == framing.encode_frame(Ping(7, 1.5).to_wire())
