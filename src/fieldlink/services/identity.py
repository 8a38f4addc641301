"""Identity: tenants, users, device credentials, and the tokens that carry them
(docs/security.md).

Tokens are JWTs with one pinned algorithm (HS256 with a shared secret by default; RS256 or
ES256 with configured PEM keys), and ``exp``, ``iat``, ``iss``, ``aud`` and ``sub`` required.
The header's ``alg`` and ``kid`` are never used to choose a key. Kinds: ``access`` (users, 15
minutes), ``refresh`` (7 days, only for ``/api/auth/refresh``), ``service`` (long-lived, for
scripts; the embedded hub writes one to ``<data-dir>/admin.token``), ``ticket`` (30 s, single
use, for a WebSocket URL) and ``session`` (the dashboard's cookie, 12 hours).

Passwords and device keys are hashed with argon2id. A device key is checked with argon2 once;
later requests with the same key hit an in-memory map of key digests, so HTTP ingest does not
pay ~20 ms of argon2 per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fieldlink.core.access import DEFAULT_TENANT, Principal, Role
from fieldlink.core.errors import Forbidden, Unauthorized, ValidationError
from fieldlink.core.measures import Measure
from fieldlink.core.model import is_valid_device_id
from fieldlink.ports import BrokerAccounts, Docs

log = logging.getLogger("fieldlink.identity")

ACCESS_TTL_S = 15 * 60
REFRESH_TTL_S = 7 * 86_400
SESSION_TTL_S = 12 * 3600
SERVICE_TTL_S = 365 * 86_400
TICKET_TTL_S = 30
LOGIN_CODE_TTL_S = 600
TOKEN_KINDS = ("access", "refresh", "service", "ticket", "session")


__all__ = ["Forbidden", "IdentityService", "TokenConfig", "TokenService", "Unauthorized"]


@dataclass
class TokenConfig:
    algorithm: str = "HS256"
    secret: bytes | None = None  # HS256
    private_key: str | None = None  # RS256 / ES256, PEM
    public_key: str | None = None
    issuer: str = "fieldlink"
    audience: str = "fieldlink"

    def signing_key(self) -> Any:
        if self.algorithm == "HS256":
            if not self.secret or len(self.secret) < 32:
                raise ValueError("HS256 needs a secret of at least 32 bytes")
            return self.secret
        if self.algorithm in ("RS256", "ES256"):
            if not self.private_key:
                raise ValueError(f"{self.algorithm} needs a private key (PEM)")
            return self.private_key
        raise ValueError(f"unsupported JWT algorithm {self.algorithm!r}: HS256, RS256 or ES256")

    def verifying_key(self) -> Any:
        if self.algorithm == "HS256":
            return self.signing_key()
        if not self.public_key:
            raise ValueError(f"{self.algorithm} needs a public key (PEM)")
        return self.public_key


class TokenService:
    def __init__(self, config: TokenConfig, clock_s: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock_s = clock_s
        self._signing = config.signing_key()
        self._verifying = config.verifying_key()

    def issue(self, subject: str, tenant_id: str, role: Role, kind: str, ttl_s: int) -> str:
        now = int(self.clock_s())
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "tid": tenant_id,
            "role": str(role),
            "kind": kind,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._signing, algorithm=self.config.algorithm)

    def claims(self, token: str, kinds: tuple[str, ...]) -> dict[str, Any]:
        """Verified claims; ``Unauthorized`` (``invalid_token`` / ``expired_token``) else."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying,
                algorithms=[self.config.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="expired_token") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(
                f"invalid token ({type(exc).__name__})", code="invalid_token"
            ) from None
        if claims.get("kind") not in kinds:
            raise Unauthorized("this kind of token is not accepted here", code="invalid_token")
        if claims.get("role") not in tuple(Role) or not isinstance(claims.get("tid"), str):
            raise Unauthorized("the token lacks a valid role or tenant", code="invalid_token")
        return claims

    def verify(self, token: str, kinds: tuple[str, ...] = ("access", "service")) -> Principal:
        claims = self.claims(token, kinds)
        return Principal(
            subject=str(claims["sub"]),
            tenant_id=claims["tid"],
            role=Role(claims["role"]),
            kind="service" if claims["kind"] == "service" else "user",
            expires_ms=int(claims["exp"]) * 1000,
        )


def load_or_create_secret(data_dir: Path) -> bytes:
    """The HS256 secret: ``<data-dir>/jwt.secret`` (0600), created on first start."""
    path = data_dir / "jwt.secret"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    write_private(path, secret)
    return secret


def write_private(path: Path, content: bytes) -> None:
    """Write a file only its owner can read (0600), atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class IdentityCounters:
    logins: int = 0
    login_failures: int = 0
    token_failures: dict[str, int] = field(default_factory=dict)
    device_auth_failures: int = 0

    def failed(self, code: str) -> None:
        self.token_failures[code] = self.token_failures.get(code, 0) + 1


class IdentityService:
    def __init__(
        self,
        docs: Docs,
        tokens: TokenService,
        broker_hasher: Callable[[str], str] | None = None,
        broker_accounts: BrokerAccounts | None = None,
    ) -> None:
        self.docs = docs
        # Hashes a device key for the broker's password file (per-device MQTT credentials),
        # which ``broker_accounts`` (the embedded broker with --device-auth) then takes.
        self.broker_hasher = broker_hasher
        self.broker_accounts = broker_accounts
        self.tokens = tokens
        self.hasher = PasswordHasher()
        self.counters = IdentityCounters()
        self.device_tenants: dict[str, str] = {}  # device id -> tenant, from credentials
        self._device_key_digests: dict[str, str] = {}  # sha256(key) -> device id, verified
        self._login_codes: dict[str, float] = {}
        self.disabled: set[str] = set()  # user names whose tokens no longer work
        self._used_tickets: dict[str, float] = {}

    # ---- start ----------------------------------------------------------------------------

    async def load(self) -> None:
        for device_id, doc in await self.docs.list_docs("device_key"):
            self.device_tenants[device_id] = doc["tenant"]
        for username, doc in await self.docs.list_docs("user"):
            if doc.get("disabled"):
                self.disabled.add(username)

    async def bootstrap(self, data_dir: Path) -> Path:
        """First start: the default tenant and an ``admin`` user; on every start, a valid
        long-lived admin service token in ``<data-dir>/admin.token`` (0600). Returns its path."""
        if await self.docs.get_doc("tenant", DEFAULT_TENANT) is None:
            await self.docs.put_doc("tenant", DEFAULT_TENANT, {"name": "Default"})
        if await self.docs.get_doc("user", "admin") is None:
            await self.docs.put_doc(
                "user",
                "admin",
                {"tenant": DEFAULT_TENANT, "role": "admin", "hash": None, "disabled": False},
            )
            log.warning("created the admin user (log in with the link printed at start)")
        return self._ensure_admin_token(data_dir)

    def _ensure_admin_token(self, data_dir: Path) -> Path:
        path = data_dir / "admin.token"
        if path.exists():
            try:
                self.tokens.verify(path.read_text().strip(), ("service",))
                return path
            except Unauthorized:
                pass  # signed with another secret, or expired: write a new one
        data_dir.mkdir(parents=True, exist_ok=True)
        token = self.tokens.issue(
            "service:admin", DEFAULT_TENANT, Role.ADMIN, "service", SERVICE_TTL_S
        )
        write_private(path, token.encode() + b"\n")
        return path

    # ---- tokens ---------------------------------------------------------------------------

    def authenticate(
        self, token: str, kinds: tuple[str, ...] = ("access", "service", "session")
    ) -> Principal:
        try:
            principal = self.tokens.verify(token, kinds)
            if principal.subject in self.disabled:
                raise Unauthorized("this user is disabled", code="user_disabled")
            return principal
        except Unauthorized as exc:
            self.counters.failed(exc.code)
            raise

    async def login(self, username: str, password: str) -> dict[str, Any]:
        doc = await self.docs.get_doc("user", username) if username else None
        ok = False
        if doc is not None and doc.get("hash") and not doc.get("disabled"):
            ok = await asyncio.to_thread(self._check, doc["hash"], password)
        if not ok:
            self.counters.login_failures += 1
            raise Unauthorized("wrong user name or password", code="invalid_credentials")
        self.counters.logins += 1
        assert doc is not None
        return self._pair(username, doc["tenant"], Role(doc["role"]))

    def _check(self, hashed: str, secret: str) -> bool:
        try:
            return bool(self.hasher.verify(hashed, secret))
        except (VerificationError, InvalidHashError):
            return False

    def _pair(self, username: str, tenant_id: str, role: Role) -> dict[str, Any]:
        return {
            "access_token": self.tokens.issue(username, tenant_id, role, "access", ACCESS_TTL_S),
            "refresh_token": self.tokens.issue(username, tenant_id, role, "refresh", REFRESH_TTL_S),
            "token_type": "bearer",
            "expires_in": ACCESS_TTL_S,
        }

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        claims = self.tokens.claims(refresh_token, ("refresh",))
        doc = await self.docs.get_doc("user", str(claims["sub"]))
        if doc is None or doc.get("disabled"):
            raise Unauthorized("the user is disabled", code="invalid_token")
        return self._pair(str(claims["sub"]), doc["tenant"], Role(doc["role"]))

    def service_token(self, name: str, tenant_id: str, role: Role, ttl_s: int) -> str:
        return self.tokens.issue(f"service:{name}", tenant_id, role, "service", ttl_s)

    # ---- the dashboard's one-time link and WebSocket tickets ------------------------------

    def login_code(self) -> str:
        code = secrets.token_urlsafe(24)
        self._login_codes[code] = time.monotonic() + LOGIN_CODE_TTL_S
        return code

    def redeem_login_code(self, code: str) -> str:
        """A session token for the admin, once per code."""
        expires = self._login_codes.pop(code, None)
        if expires is None or expires < time.monotonic():
            raise Unauthorized("this login link was used or has expired", code="invalid_code")
        return self.tokens.issue("admin", DEFAULT_TENANT, Role.ADMIN, "session", SESSION_TTL_S)

    def ws_ticket(self, principal: Principal) -> str:
        return self.tokens.issue(
            principal.subject, principal.tenant_id, principal.role, "ticket", TICKET_TTL_S
        )

    def redeem_ticket(self, ticket: str) -> Principal:
        claims = self.tokens.claims(ticket, ("ticket",))
        now = time.monotonic()
        for jti, until in list(self._used_tickets.items()):
            if until < now:
                del self._used_tickets[jti]
        jti = str(claims.get("jti"))
        if jti in self._used_tickets:
            self.counters.failed("ticket_reused")
            raise Unauthorized("this ticket was already used", code="invalid_token")
        self._used_tickets[jti] = now + TICKET_TTL_S + 5
        return Principal(
            str(claims["sub"]),
            claims["tid"],
            Role(claims["role"]),
            "user",
            int(claims["exp"]) * 1000,
        )

    # ---- users, tenants, device credentials ----------------------------------------------

    async def create_user(self, username: str, password: str, role: Role, tenant_id: str) -> None:
        if not is_valid_device_id(username) or len(password) < 8:
            raise ValidationError(
                "invalid_user", "a user needs a name (A-Z a-z 0-9 _ . : -) and 8+ characters"
            )
        if await self.docs.get_doc("user", username) is not None:
            raise ValidationError("user_exists", f"user {username!r} exists", "$.username")
        if await self.docs.get_doc("tenant", tenant_id) is None:
            await self.docs.put_doc("tenant", tenant_id, {"name": tenant_id})
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        await self.docs.put_doc(
            "user",
            username,
            {"tenant": tenant_id, "role": str(role), "hash": hashed, "disabled": False},
        )

    async def disable_user(self, username: str) -> None:
        """Refuse the user's tokens from now on (its open connections are closed by the
        caller) and its refreshes."""
        doc = await self.docs.get_doc("user", username)
        if doc is None:
            raise ValidationError("unknown_user", f"no user {username!r}", "$.username")
        doc["disabled"] = True
        await self.docs.put_doc("user", username, doc)
        self.disabled.add(username)

    async def user_tenant(self, username: str) -> str | None:
        doc = await self.docs.get_doc("user", username)
        return None if doc is None else str(doc["tenant"])

    async def create_device_credentials(self, device_id: str, tenant_id: str) -> str:
        """A new key for the device (returned once; only its hash is kept). The device is
        assigned to ``tenant_id`` from then on."""
        key = secrets.token_urlsafe(24)
        hashed = await asyncio.to_thread(self.hasher.hash, key)
        doc = {"tenant": tenant_id, "hash": hashed}
        if self.broker_hasher is not None:
            doc["broker_hash"] = self.broker_hasher(key)
        await self.docs.put_doc("device_key", device_id, doc)
        self.device_tenants[device_id] = tenant_id
        self._device_key_digests = {
            d: dev for d, dev in self._device_key_digests.items() if dev != device_id
        }
        if self.broker_accounts is not None and doc.get("broker_hash"):
            self.broker_accounts.add_user(device_id, doc["broker_hash"])
        return key

    async def broker_users(self) -> dict[str, str]:
        """Device id -> broker password hash, for every device with credentials."""
        return {
            device_id: doc["broker_hash"]
            for device_id, doc in await self.docs.list_docs("device_key")
            if doc.get("broker_hash")
        }

    async def device_tenant_for_key(self, device_id: str, key: str) -> str:
        """The device's tenant if ``key`` is its key; ``Unauthorized`` otherwise."""
        digest = hashlib.sha256(f"{device_id}\x00{key}".encode()).hexdigest()
        if self._device_key_digests.get(digest) == device_id:
            return self.device_tenants[device_id]
        doc = await self.docs.get_doc("device_key", device_id)
        if doc is None or not await asyncio.to_thread(self._check, doc["hash"], key):
            self.counters.device_auth_failures += 1
            raise Unauthorized("unknown device or wrong key", code="invalid_device_key")
        self._device_key_digests[digest] = device_id
        self.device_tenants[device_id] = doc["tenant"]
        return str(doc["tenant"])

    def credential_tenant(self, device_id: str) -> str | None:
        return self.device_tenants.get(device_id)

    def measures(self) -> Iterator[Measure]:
        """Logins refused, and every authentication refusal by code (tokens, device keys);
        the HTTP layer adds its own refusals under the same name."""
        yield Measure(
            "fieldlink_auth_logins_failed",
            "Password logins refused",
            "counter",
            self.counters.login_failures,
        )
        refused = {code: float(n) for code, n in self.counters.token_failures.items()}
        if self.counters.device_auth_failures:
            refused["invalid_device_key"] = float(self.counters.device_auth_failures)
        yield Measure(AUTH_REFUSED[0], AUTH_REFUSED[1], "counter", label="code", values=refused)


AUTH_REFUSED = (
    "fieldlink_auth_refused",
    "Requests and handshakes refused by authentication or limits, by code",
)
