"""Operations: the dashboard (its page and static files), health and Prometheus metrics.

The dashboard's files ship inside the package (``fieldlink.web``) and are read once, when the
router is built. Files are served under ``/static/<version>/``, where the version is a digest
of all of them: so they may be cached for a year (``immutable``) while the page itself
(``no-cache``, revalidated by ETag) always names the current version. Nothing is loaded from
anywhere else (the Content-Security-Policy says ``'self'``), and no Node.js runs here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from fieldlink.api.common import Callers
from fieldlink.api.context import ApiContext
from fieldlink.api.metrics import exposition
from fieldlink.core.access import Principal

PAGE = "index.html"
VERSION_MARK = "{{version}}"
PRELOAD_MARK = "<!--modulepreload-->"
STATIC_PREFIX = "/static/"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
NOT_SERVED = {"__init__.py", PAGE}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__pycache__")):
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", entry


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class WebAssets:
    """The dashboard's files, read once. ``version`` changes whenever any file does."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.assets: dict[str, Asset] = {}
        digest = hashlib.sha256()
        for path, body in sorted(files.items()):
            digest.update(path.encode() + b"\0" + body + b"\0")
            suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ""
            if path in NOT_SERVED or suffix not in MEDIA_TYPES:
                continue
            self.assets[path] = Asset(body, MEDIA_TYPES[suffix], _etag(body))
        self.version = digest.hexdigest()[:12]
        base = f"{STATIC_PREFIX}{self.version}/"
        preloads = "\n".join(
            f'<link rel="modulepreload" href="{base}{path}">'
            for path in sorted(self.assets)
            if path.startswith("js/") and path.endswith(".js")
        )
        page = files[PAGE].decode().replace(VERSION_MARK, self.version)
        self.page = page.replace(PRELOAD_MARK, preloads).encode()
        self.page_etag = _etag(self.page)

    @classmethod
    def from_package(cls, package: str = "fieldlink.web") -> WebAssets:
        return cls({path: entry.read_bytes() for path, entry in _walk(resources.files(package))})


def _not_modified(request: Request, etag: str, headers: dict[str, str]) -> Response | None:
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    return None


def page_headers(request: Request) -> dict[str, str]:
    """The page may load and connect only to the hub itself; no one may frame it."""
    host = request.headers.get("host", "")
    policy = (
        "default-src 'self'; "
        f"connect-src 'self' ws://{host} wss://{host}; "
        "img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Cache-Control": REVALIDATE,
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter()
    web = WebAssets.from_package()

    @api.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        """The dashboard. Signed out it shows the sign-in form (docs/dashboard.md)."""
        headers = page_headers(request)
        cached = _not_modified(request, web.page_etag, headers)
        if cached is not None:
            return cached
        return Response(
            web.page,
            media_type="text/html; charset=utf-8",
            headers={**headers, "ETag": web.page_etag},
        )

    @api.get(STATIC_PREFIX + "{version}/{path:path}", include_in_schema=False)
    async def static(version: str, path: str, request: Request) -> Response:
        """A dashboard file. A stale ``version`` (a page loaded before an upgrade) gets
        today's file, not cached, so no cache keeps it under the old name."""
        asset = web.assets.get(path)
        if asset is None:
            return JSONResponse(
                {"error": {"code": "not_found", "message": "no such file"}}, status_code=404
            )
        headers = {
            "Cache-Control": IMMUTABLE if version == web.version else REVALIDATE,
            "X-Content-Type-Options": "nosniff",
        }
        cached = _not_modified(request, asset.etag, headers)
        if cached is not None:
            return cached
        return Response(
            asset.body, media_type=asset.media_type, headers={**headers, "ETag": asset.etag}
        )

    @api.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        body = ctx.health.report()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @api.get("/metrics", tags=["ops"])
    async def metrics(_: Principal = Depends(callers.admin)) -> Response:
        return Response(exposition(ctx.metrics), media_type="text/plain; version=0.0.4")

    return api
