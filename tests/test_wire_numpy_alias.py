"""Message validation does not depend on how numpy spells ``numpy.typing.NDArray``.

numpy 2.5 (Python >= 3.12 only) defines ``NDArray`` as a PEP 695 type alias. Then
``typing.get_origin(NDArray[np.floating])`` is the alias, not ``np.ndarray``, and a
validator that found tensor fields through it refused every tensor message
("InferRequest.tensor: unsupported field annotation NDArray[numpy.floating]",
issue 19). This Python (3.11) cannot install numpy 2.5, so the test builds the
alias the way numpy 2.5 does, with ``typing_extensions.TypeAliasType``, puts it in
place of ``numpy.typing.NDArray`` before ``edgeci_p2p.wire`` is imported (in a
fresh interpreter), and builds and round-trips every message type there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typing_extensions import TypeAliasType

from edgeci_p2p.wire import messages
from edgeci_p2p.wire.tensors import Tensor

ROOT = Path(__file__).resolve().parents[1]

_S = typing.TypeVar("_S", bound=np.generic)
NDArray25 = TypeAliasType("NDArray", np.ndarray[tuple[Any, ...], np.dtype[_S]], type_params=(_S,))
"""``numpy.typing.NDArray`` as numpy 2.5 defines it (``type NDArray[S] = ...``)."""

NUMPY_25 = """
import typing
from typing import Any
import numpy as np
import numpy.typing as npt
from typing_extensions import TypeAliasType

_S = typing.TypeVar("_S", bound=np.generic)
npt.NDArray = TypeAliasType(
    "NDArray", np.ndarray[tuple[Any, ...], np.dtype[_S]], type_params=(_S,)
)
assert typing.get_origin(npt.NDArray[np.floating]) is not np.ndarray
"""


def test_the_numpy_25_alias_hides_ndarray_from_get_origin() -> None:
    # What broke the old reflection: the origin is the alias, not np.ndarray.
    assert typing.get_origin(NDArray25[np.floating]) is NDArray25
    assert typing.get_origin(NDArray25[np.floating]) is not np.ndarray


def test_tensor_fields_are_found_by_their_marker_alone() -> None:
    assert messages.is_tensor_annotation(messages.TensorField)
    assert messages.is_tensor_annotation(messages.TensorField | None)
    assert not messages.is_tensor_annotation(Tensor)  # a bare NDArray is not enough
    aliased = typing.Annotated[NDArray25[np.floating], messages.TENSOR]
    assert messages.is_tensor_annotation(aliased | None)
    x = np.zeros((1, 3, 2, 2), np.float32)
    assert messages._coerce(x, aliased, "f") is x
    with pytest.raises(messages.MessageError):
        messages._coerce(b"no", aliased, "f")
    with pytest.raises(TypeError, match="unsupported field annotation"):
        messages._coerce(x, NDArray25[np.floating], "f")


@pytest.mark.parametrize("cls", sorted(messages.MESSAGE_TYPES.values(), key=lambda c: c.TYPE))
def test_tensor_fields_are_the_fields_the_session_chunks(cls: type[messages.Message]) -> None:
    marked = [n for n, tp in cls._fields().items() if messages.is_tensor_annotation(tp)]
    assert tuple(marked) == cls.TENSOR_FIELDS


def test_every_message_builds_and_round_trips_with_numpy_25s_ndarray() -> None:
    script = NUMPY_25 + textwrap.dedent(
        """
        from edgeci_p2p.wire import messages, tensors
        from tests.wiresamples import equal, roundtrip, samples

        assert typing.get_origin(tensors.Tensor) is not np.ndarray
        built = set()
        for m in samples():
            assert equal(roundtrip(m), m), m
            built.add(m.TYPE)
        assert built == set(messages.MESSAGE_TYPES), set(messages.MESSAGE_TYPES) - built
        x = np.zeros((1, 3, 4, 4), np.float32)
        messages.InferRequest("r", "resnet34", tensor=x)  # the request of issue 19
        print("ok", len(built))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
