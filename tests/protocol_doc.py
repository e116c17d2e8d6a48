"""``docs/protocol.md``'s tables, machine-read (standard library only).

A table is found by the paragraph or heading just above it (its *anchor*); each row
gives a field (or key) name, whether it is optional (``?``), its type as written in
the document, and its meaning. :func:`parse_type` reads the document's type
notation (section 4's rules) and :func:`conforms` checks a decoded CBOR value
against it, so that a live peer's messages can be checked against the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


@dataclass(frozen=True)
class Row:
    name: str
    optional: bool
    type: str
    """The type as written, backticks and range qualifiers (``≥ 0``) removed."""
    meaning: str


@dataclass(frozen=True)
class Table:
    anchor: str
    """The paragraph (or heading) just above the table, its lines joined."""
    section: str
    """The ``##``/``###`` heading the table is under."""
    rows: tuple[Row, ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def normalise_type(cell: str) -> str:
    t = cell.replace("`", "")
    t = re.sub(r"\s*≥\s*\d+", "", t)
    return re.sub(r"\s+", " ", t).strip()


def tables(text: str | None = None) -> list[Table]:
    """Every ``| field | type | meaning |`` or ``| key | type | meaning |`` table."""
    lines = (DOC_PATH.read_text() if text is None else text).splitlines()
    out: list[Table] = []
    section, anchor = "", ""
    para: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if not line.strip() or line.startswith("|"):
            if para:
                anchor, para = " ".join(para), []
        else:
            para.append(line.strip())
        if re.match(r"^\| (field|key) \| type \| meaning \|$", line):
            rows = []
            i += 2  # past the header and its rule
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                name_cell, type_cell, meaning = cells[0], cells[1], "|".join(cells[2:])
                m = re.fullmatch(r"`([a-z_0-9]+)`( \?)?", name_cell)
                if m is None:
                    raise ValueError(f"docs/protocol.md: bad name cell {name_cell!r}")
                rows.append(Row(m[1], bool(m[2]), normalise_type(type_cell), meaning.strip()))
                i += 1
            out.append(Table(anchor, section, tuple(rows)))
            continue
        i += 1
    return out


def table(anchor_part: str, text: str | None = None) -> Table:
    """The one table whose anchor contains ``anchor_part``."""
    found = [t for t in tables(text) if anchor_part in t.anchor]
    if len(found) != 1:
        raise LookupError(f"{len(found)} tables anchored at {anchor_part!r}")
    return found[0]


def message_table(kind: str, text: str | None = None) -> Table:
    """The field table of message ``kind`` (anchored at its bold name)."""
    return table(f"**`{kind}`**", text)


# --- the type notation -------------------------------------------------------------------


@dataclass(frozen=True)
class T:
    """A parsed type: ``kind`` is a primitive name, ``list``, ``tuple``, ``map``
    (text keys, ``args[0]`` the value type), ``record`` (``fields``) or ``or``."""

    kind: str
    args: tuple[T, ...] = ()
    fields: tuple[tuple[str, T], ...] = ()


PRIMITIVES = {"int", "float", "str", "bytes", "bool", "plain", "tensor", "null"}
NAMED = {
    "span": "[int, int]",
    "rect": "{rows: span, cols: span}",
}
"""Named types the document defines in prose (section 4's rules)."""


def parse_type(s: str, named: dict[str, str] | None = None) -> T:
    named = {**NAMED, **(named or {})}
    tokens = re.findall(r"[A-Za-z_][A-Za-z_0-9]*|[\[\]{}:,]", s)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(want: str | None = None) -> str:
        nonlocal pos
        tok = tokens[pos]
        if want is not None and tok != want:
            raise ValueError(f"type {s!r}: expected {want!r} at {tok!r}")
        pos += 1
        return tok

    def alt() -> T:
        options = [one()]
        while peek() == "or":
            take("or")
            options.append(one())
        return options[0] if len(options) == 1 else T("or", tuple(options))

    def one() -> T:
        tok = take()
        if tok == "[":
            items = [alt()]
            while peek() == ",":
                take(",")
                items.append(alt())
            take("]")
            return T("list", (items[0],)) if len(items) == 1 else T("tuple", tuple(items))
        if tok == "{":
            first = take()
            take(":")
            if first == "str":
                value = alt()
                take("}")
                return T("map", (value,))
            fields = [(first, alt())]
            while peek() == ",":
                take(",")
                name = take()
                take(":")
                fields.append((name, alt()))
            take("}")
            return T("record", fields=tuple(fields))
        if tok in PRIMITIVES:
            return T(tok)
        if tok in named:
            return parse_type(named[tok], named)
        raise ValueError(f"type {s!r}: unknown type {tok!r}")

    out = alt()
    if pos != len(tokens):
        raise ValueError(f"type {s!r}: trailing {tokens[pos:]}")
    return out


def is_tensor(value: Any) -> bool:
    """A tensor as decoded by plain cbor2 (tag 40), or one a client reassembled."""
    if getattr(value, "tag", None) == 40:
        return True
    return type(value).__name__ == "ndarray"


def conforms(value: Any, t: T, path: str = "") -> list[str]:
    """What about ``value`` disagrees with type ``t`` (empty: it conforms)."""
    k = t.kind
    ok: bool
    if k == "or":
        for option in t.args:
            if not conforms(value, option, path):
                return []
        return [f"{path}: {value!r:.80} is none of the options"]
    if k == "int":
        ok = type(value) is int
    elif k == "float":
        ok = type(value) in (int, float)
    elif k == "str":
        ok = isinstance(value, str)
    elif k == "bytes":
        ok = isinstance(value, bytes)
    elif k == "bool":
        ok = isinstance(value, bool)
    elif k == "null":
        ok = value is None
    elif k == "tensor":
        ok = is_tensor(value)
    elif k == "plain":
        ok = not is_tensor(value)
    elif k == "list":
        if not isinstance(value, list):
            return [f"{path}: expected an array, got {value!r:.80}"]
        return [e for i, v in enumerate(value) for e in conforms(v, t.args[0], f"{path}[{i}]")]
    elif k == "tuple":
        if not isinstance(value, list) or len(value) != len(t.args):
            return [f"{path}: expected an array of {len(t.args)}, got {value!r:.80}"]
        return [
            e
            for i, (v, a) in enumerate(zip(value, t.args, strict=True))
            for e in conforms(v, a, f"{path}[{i}]")
        ]
    elif k == "map":
        if not isinstance(value, dict) or not all(isinstance(x, str) for x in value):
            return [f"{path}: expected a map with text keys, got {value!r:.80}"]
        return [e for x, v in value.items() for e in conforms(v, t.args[0], f"{path}.{x}")]
    elif k == "record":
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r:.80}"]
        names = [n for n, _ in t.fields]
        errors = (
            [f"{path}: keys {sorted(value)} are not {names}"] if set(value) != set(names) else []
        )
        return errors + [
            e for n, ft in t.fields if n in value for e in conforms(value[n], ft, f"{path}.{n}")
        ]
    else:
        raise ValueError(k)
    return [] if ok else [f"{path}: {value!r:.80} is not {k}"]


def check_map(
    value: dict[str, Any], tab: Table, path: str, skip: tuple[str, ...] = ()
) -> list[str]:
    """``value`` (a message or a documented map) against table ``tab``: every key
    documented, every required key present, every value of its documented type."""
    errors = []
    for key in value:
        if key in skip:
            continue
        if key not in tab.names:
            errors.append(f"{path}.{key}: not in the document's table ({tab.anchor})")
    for row in tab.rows:
        if row.name not in value:
            if not row.optional:
                errors.append(f"{path}.{row.name}: required by the document, absent")
            continue
        if row.optional and value[row.name] is None:
            continue
        errors += conforms(value[row.name], parse_type(row.type), f"{path}.{row.name}")
    return errors
