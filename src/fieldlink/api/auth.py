"""Authentication at the edges: REST requests, the WebSocket handshake, and devices posting
telemetry over HTTP (docs/security.md). Everything here turns a request into a ``Principal``
(or a device identity) or refuses it; what a principal may do is ``core/access.py``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import time
from collections.abc import Iterable, Iterator
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from websockets.http11 import Request as WsRequest

from fieldlink.core.access import DEFAULT_TENANT, Principal
from fieldlink.core.errors import FieldlinkError, Forbidden, RateLimited, Unauthorized
from fieldlink.core.measures import Measure
from fieldlink.core.origins import OriginPolicy
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.services.identity import AUTH_REFUSED, IdentityService

SESSION_COOKIE = "fieldlink_session"
READ_METHODS = ("GET", "HEAD", "OPTIONS")

__all__ = ["SESSION_COOKIE", "HttpAuth", "RateLimited", "bearer", "is_loopback"]


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


class HttpAuth:
    """``allowed_origins``: browser origins besides the hub's own, which are always allowed
    (the page is served by the hub itself: ``http://HOST:PORT`` for each of ``own_hosts``)."""

    def __init__(
        self,
        *,
        identity: IdentityService,
        allowed_origins: Iterable[str],
        own_hosts: Iterable[str],
        own_port: int,
        device_limiter: RateLimiter,
        anonymous_devices: bool,
    ) -> None:
        self.identity = identity
        self.origins = OriginPolicy(
            [*allowed_origins, *(f"http://{h}:{own_port}" for h in own_hosts)]
        )
        self.device_limiter = device_limiter
        self.anonymous_devices = anonymous_devices
        self.refused: dict[str, int] = {}

    def _refuse(self, exc: FieldlinkError) -> FieldlinkError:
        self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
        return exc

    def check_origin(self, origin: str | None) -> None:
        """Browsers always send Origin; it must be allowed (exactly, or by a pattern)."""
        if origin is not None and not self.origins.allows(origin):
            raise self._refuse(Forbidden("this origin is not allowed", code="origin_not_allowed"))

    def handshake_principal(self, headers: dict[str, str], client_host: str) -> Principal | None:
        """The principal of a Socket.IO handshake request (lower-cased headers): its bearer
        token or session cookie; None if it has neither (the CONNECT may carry a token)."""
        token = bearer(headers.get("authorization"))
        if token is not None:
            return self.identity.authenticate(token, ("access", "service"))
        cookie_header = headers.get("cookie")
        if cookie_header:
            jar: SimpleCookie = SimpleCookie()
            jar.load(cookie_header)
            if SESSION_COOKIE in jar:
                return self.identity.authenticate(jar[SESSION_COOKIE].value, ("session",))
        return None

    # ---- REST ---------------------------------------------------------------------------

    def principal(self, request: Request) -> Principal:
        """A bearer token (access or service), or the dashboard's session cookie. A cookie
        on a state-changing request also needs an allowed Origin (CSRF)."""
        token = bearer(request.headers.get("authorization"))
        if token is not None:
            return self.identity.authenticate(token, ("access", "service"))
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            origin = request.headers.get("origin")
            if request.method not in READ_METHODS:
                if origin is None:
                    raise self._refuse(
                        Forbidden(
                            "a cookie request that changes state needs an Origin",
                            code="origin_not_allowed",
                        )
                    )
                self.check_origin(origin)
            return self.identity.authenticate(cookie, ("session",))
        raise self._refuse(Unauthorized("a bearer token is required", code="missing_token"))

    # ---- WebSocket handshake -----------------------------------------------------------

    def websocket(self, request: WsRequest) -> Principal:
        """``Authorization: Bearer``, a ``bearer.<token>`` subprotocol (browsers, next to
        ``fieldlink.v1``), a single-use ``?ticket=`` from ``POST /api/ws-ticket``, or the
        dashboard's session cookie; Origin checked first."""
        headers = request.headers
        self.check_origin(headers.get("Origin"))
        token = bearer(headers.get("Authorization"))
        if token is None:
            for offered in ",".join(headers.get_all("Sec-WebSocket-Protocol")).split(","):
                name = offered.strip()
                if name.startswith("bearer."):
                    token = name[len("bearer.") :]
                    break
        if token is not None:
            return self.identity.authenticate(token, ("access", "service"))
        query: dict[str, list[str]] = parse_qs(urlsplit(request.path).query)
        if "ticket" in query:
            return self.identity.redeem_ticket(query["ticket"][0])
        if "token" in query or "access_token" in query:
            raise self._refuse(
                Unauthorized(
                    "tokens are not accepted in the URL; use a ticket", code="token_in_url"
                )
            )
        cookie_header = headers.get("Cookie")
        if cookie_header:
            jar: SimpleCookie = SimpleCookie()
            jar.load(cookie_header)
            if SESSION_COOKIE in jar:
                return self.identity.authenticate(jar[SESSION_COOKIE].value, ("session",))
        raise self._refuse(Unauthorized("a token is required", code="missing_token"))

    # ---- devices on HTTP ----------------------------------------------------------------

    async def device(self, request: Request) -> tuple[str | None, str]:
        """``(device_id, tenant)`` from HTTP Basic ``device_id:key``; ``(None, default)`` for
        an anonymous device, allowed only from loopback while anonymous devices are on."""
        header = request.headers.get("authorization")
        if header and header[:6].lower() == "basic ":
            try:
                user, _, key = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise self._refuse(
                    Unauthorized("malformed Basic credentials", code="invalid_device_key")
                ) from None
            tenant = await self.identity.device_tenant_for_key(user, key)
            self.rate_limit(user)
            return user, tenant
        client = request.client.host if request.client else None
        if self.anonymous_devices and is_loopback(client):
            self.rate_limit(f"anon:{client}")
            return None, DEFAULT_TENANT
        raise self._refuse(
            Unauthorized(
                "device credentials are required (HTTP Basic device_id:key)",
                code="device_auth_required",
            )
        )

    def rate_limit(self, key: str) -> None:
        wait_s = self.device_limiter.take(key, time.monotonic())
        if wait_s > 0:
            self.refused["rate_limited"] = self.refused.get("rate_limited", 0) + 1
            raise RateLimited("too many requests for this device; slow down", wait_s)

    def measures(self) -> Iterator[Measure]:
        refused = {code: float(n) for code, n in self.refused.items()}
        yield Measure(AUTH_REFUSED[0], AUTH_REFUSED[1], "counter", label="code", values=refused)
