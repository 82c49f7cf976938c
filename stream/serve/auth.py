"""Bearer tokens and their rights (publish, subscribe:<call>, subscribe:*, admin) from config."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from stream.serve.errors import ApiError


class Authorizer:
    """No tokens configured: everything is allowed (the config refuses that off loopback)."""

    def __init__(self, tokens: Mapping[str, Sequence[str]]) -> None:
        self._tokens = {token: frozenset(rights) for token, rights in tokens.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def rights(self, request: web.Request) -> frozenset[str]:
        """The rights of the request's token (Authorization: Bearer, or ?token= for browser websockets)."""
        return self.token_rights(bearer_token(request))

    def token_rights(self, token: str | None) -> frozenset[str]:
        """The rights of a token however it came (a phone stream's comes in its first message)."""
        if not self.enabled:
            return frozenset({"admin"})
        if token is None:
            raise ApiError(401, "unauthorized", "a token is required", {"WWW-Authenticate": "Bearer"})
        for known, rights in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return rights
        raise ApiError(
            401, "unauthorized", "unknown token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    def require_publish(self, request: web.Request) -> None:
        self.require_publish_token(bearer_token(request))

    def require_publish_token(self, token: str | None) -> None:
        if not self.token_rights(token) & {"publish", "admin"}:
            raise ApiError(403, "forbidden", "this token may not publish media")

    def require_subscribe(self, request: web.Request, call: str | None) -> None:
        rights = self.rights(request)
        if "admin" in rights:
            return
        if call is None:
            raise ApiError(403, "forbidden", "only an admin token may subscribe to every call")
        if not rights & {"subscribe:*", f"subscribe:{call}"}:
            raise ApiError(403, "forbidden", f"this token may not subscribe to call '{call}'")

    def require_admin(self, request: web.Request) -> None:
        if "admin" not in self.rights(request):
            raise ApiError(403, "forbidden", "an admin token is required")


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


# A token's value after ?token= / &token= (a URL, an access-log line) or after "Bearer " (a header).
_SECRET = re.compile(r"(?i)(\btoken=|\bbearer\s+)[^\s&\"',;]+")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with every token value it carries replaced by ***."""
    return _SECRET.sub(lambda match: match.group(1) + REDACTED, text)


class RedactTokens(logging.Filter):
    """On a log handler: no token reaches the log, whoever logged it (aiohttp's access log carries ?token=)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _SECRET.search(message):
            record.msg, record.args = redact(message), None
        for key, value in vars(record).items():  # aiohttp passes the request line as an extra field too
            if key != "msg" and _is_secret_text(value):
                setattr(record, key, _redact_value(value))
        return True


def _is_secret_text(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_is_secret_text(v) for v in value.values())
    return isinstance(value, str) and _SECRET.search(value) is not None


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return redact(value) if isinstance(value, str) else value
