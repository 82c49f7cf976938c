"""Errors a client caused, with the HTTP status and machine-readable code they are answered with."""

from __future__ import annotations


class ApiError(Exception):
    """Becomes `{"error": {"code", "message"}}` with its HTTP status (API.md)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
