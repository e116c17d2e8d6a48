"""Testbeds shipped with the package (``edgeci_p2p/testbeds/*.json``) and a loader.

Each file is a :meth:`~edgeci_p2p.core.cost.Testbed.from_dict` dict whose
``source`` says where its numbers come from.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from edgeci_p2p.core.cost import Testbed

_PACKAGE = "edgeci_p2p.testbeds"


def testbed_names() -> list[str]:
    """Names of the shipped testbeds, sorted."""
    return sorted(
        p.name[: -len(".json")]
        for p in resources.files(_PACKAGE).iterdir()
        if p.name.endswith(".json")
    )


def load_testbed(name_or_path: str) -> Testbed:
    """A shipped testbed by name, or a testbed JSON file by path."""
    if name_or_path.endswith(".json") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"testbed file {name_or_path} does not exist")
        text = path.read_text()
    else:
        res = resources.files(_PACKAGE).joinpath(f"{name_or_path}.json")
        if not res.is_file():
            raise ValueError(
                f"unknown testbed {name_or_path!r}; shipped: {', '.join(testbed_names())} "
                "(or give a path to a JSON file)"
            )
        text = res.read_text()
    try:
        return Testbed.from_dict(json.loads(text))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"testbed {name_or_path}: malformed ({e!r})") from e
