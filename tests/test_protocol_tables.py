"""docs/protocol.md's field tables are the message classes of ``edgeci_p2p/wire/messages.py``.

Every table of section 4 is parsed and compared with the class it documents: the
same fields, in the same order, the same optional ones (``?`` = has a default) and
the same types. A field added to one and not the other fails here. The tables
that document the daemon's plain-data bodies (peer entries, ``timing``,
``plan_result.body``) have no class; ``test_protocol_conformance.py`` checks
them against a live peer.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import pytest

from edgeci_p2p.wire import messages
from tests import protocol_doc
from tests.protocol_doc import Table

RECORD_NAMES: dict[type[Any], str] = {
    messages.WorkItem: "item",
    messages.StripStage: "strip_stage",
    messages.Rect: "rect",
}
"""Records the document names (and defines in a table or in prose)."""

RECORD_TABLES: dict[str, type[messages.Record]] = {
    "`item` (a work item": messages.WorkItem,
    "A `strip_stage` is a map": messages.StripStage,
    "The keys of `plan.body`": messages.PlanOptions,
}
"""Tables of records, by anchor."""

LIVE_TABLES = (
    "A peer entry is a map",
    "The keys of `timing`",
    "The keys of `plan_result.body`",
)
"""Tables of the daemon's plain-data bodies, checked live by the conformance test."""


def render(tp: Any) -> str:
    """An annotation in the document's type notation."""
    origin = typing.get_origin(tp)
    if messages.is_tensor_annotation(tp) and origin is typing.Annotated:
        return "tensor"
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(render(a) for a in options)
    if tp is Any:
        return "plain"
    if tp in (int, float, str, bytes, bool):
        return str(tp.__name__)
    if origin is tuple:
        return "[" + ", ".join(render(a) for a in typing.get_args(tp)) + "]"
    if origin is list:
        return f"[{render(typing.get_args(tp)[0])}]"
    if origin is dict:
        return f"{{str: {render(typing.get_args(tp)[1])}}}"
    if tp in RECORD_NAMES:
        return RECORD_NAMES[tp]
    if isinstance(tp, type) and issubclass(tp, messages.Record):
        fields = ", ".join(f"{n}: {render(t)}" for n, t in tp._fields().items())
        return f"{{{fields}}}"
    raise AssertionError(f"no document notation for {tp!r}")


def has_default(cls: type[Any], name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def compare(cls: type[messages.Record], tab: Table) -> list[str]:
    errors = []
    fields = cls._fields()
    if tab.names != list(fields):
        errors.append(f"fields: document {tab.names}, class {list(fields)}")
    for row in tab.rows:
        if row.name not in fields:
            continue
        if row.optional != has_default(cls, row.name):
            errors.append(f"{row.name}: optional in {'document' if row.optional else 'class'} only")
        want = render(fields[row.name])
        if row.type != want:
            errors.append(f"{row.name}: document type {row.type!r}, class {want!r}")
    return errors


@pytest.mark.parametrize("kind", sorted(messages.MESSAGE_TYPES))
def test_each_message_table_is_its_class(kind: str) -> None:
    cls = messages.MESSAGE_TYPES[kind]
    assert compare(cls, protocol_doc.message_table(kind)) == []


@pytest.mark.parametrize("anchor", sorted(RECORD_TABLES))
def test_each_record_table_is_its_class(anchor: str) -> None:
    assert compare(RECORD_TABLES[anchor], protocol_doc.table(anchor)) == []


def test_every_table_of_section_4_is_checked() -> None:
    # A table added to the document without a class (or a live check) fails here.
    known = {f"**`{k}`**" for k in messages.MESSAGE_TYPES} | set(RECORD_TABLES) | set(LIVE_TABLES)
    for tab in protocol_doc.tables():
        if not tab.section.startswith("4"):
            continue
        assert any(k in tab.anchor for k in known), f"unchecked table after {tab.anchor!r}"


def test_every_documented_type_parses() -> None:
    for tab in protocol_doc.tables():
        if tab.section.startswith("4"):
            for row in tab.rows:
                if row.type not in ("[item]", "[strip_stage]"):
                    protocol_doc.parse_type(row.type)


def test_the_table_check_notices_a_field_added_to_either_side() -> None:
    text = protocol_doc.DOC_PATH.read_text()
    tab = protocol_doc.message_table("cancel")
    assert compare(messages.Cancel, tab) == []
    more = text.replace(
        "| `tile_id` ? | int | only this tile",
        "| `reason` ? | str | why\n| `tile_id` ? | int | only this tile",
    )
    assert compare(messages.Cancel, protocol_doc.message_table("cancel", more))
    fewer = text.replace("| `tile_id` ? | int | only this tile", "| `other` | int | x")
    assert compare(messages.Cancel, protocol_doc.message_table("cancel", fewer))

    @dataclasses.dataclass(frozen=True)
    class Wider(messages.Message):
        TYPE: typing.ClassVar[str] = "cancel"
        request_id: str
        tile_id: int | None = None
        reason: str | None = None

    assert compare(Wider, tab)
