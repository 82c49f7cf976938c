"""Bearer tokens and their rights (publish, subscribe:<call>, subscribe:*, admin) from config."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from aiohttp import web

from stream.errors import ApiError


class Authorizer:
    """No tokens configured: everything is allowed (the config refuses that off loopback)."""

    def __init__(self, tokens: Mapping[str, Sequence[str]]) -> None:
        self._tokens = {token: frozenset(rights) for token, rights in tokens.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def rights(self, request: web.Request) -> frozenset[str]:
        """The rights of the request's token (Authorization: Bearer, or ?token= for browser websockets)."""
        if not self.enabled:
            return frozenset({"admin"})
        token = bearer_token(request)
        if token is None:
            raise ApiError(401, "unauthorized", "a token is required", {"WWW-Authenticate": "Bearer"})
        for known, rights in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return rights
        raise ApiError(
            401, "unauthorized", "unknown token", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    def require_publish(self, request: web.Request) -> None:
        rights = self.rights(request)
        if not rights & {"publish", "admin"}:
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
