"""Errors of the asyncio shell, each carrying the wire code of its error reply."""

from __future__ import annotations

from edgeci_p2p.wire.errors import ErrorCode


class RequestError(Exception):
    """A request that cannot be served; carries the wire code for the error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CancelledTile(Exception):
    """The tile's request was cancelled before the worker reached it."""


def code_of(error: BaseException, default: ErrorCode = ErrorCode.BAD_REQUEST) -> ErrorCode:
    """The wire code an error carries (its class's or instance's ``code``), else ``default``."""
    code = getattr(error, "code", None)
    return code if isinstance(code, ErrorCode) else default


def received_code(value: int) -> ErrorCode:
    """A received error code; unknown ones (a newer peer's) count as a failed request."""
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.REQUEST_FAILED
