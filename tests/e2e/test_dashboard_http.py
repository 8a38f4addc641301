"""The dashboard over plain HTTP (no browser): the page and its files with their content types
and caching headers, the sign-in and sign-out routes and their cookie, and the files shipping
in the package, with the vendored uPlot matching what was fetched from npm."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "src" / "fieldlink" / "web"
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


async def test_page_and_files_have_content_types_and_cache_headers(hub: Any) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        again = await http.get("/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        # Every file the page names is served, typed, and cacheable for a year.
        urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
        version = urls[0].split("/")[2]
        assert len(version) == 12 and all(u.split("/")[2] == version for u in urls)
        names = {u.split("/", 3)[3] for u in urls}
        js = {p.relative_to(WEB).as_posix() for p in WEB.rglob("*.js")}
        assert js <= names, f"modules the page does not preload: {js - names}"
        for url in urls:
            response = await http.get(url)
            assert response.status_code == 200, url
            assert response.headers["content-type"] == TYPES[Path(url).suffix], url
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert (
                await http.get(url, headers={"If-None-Match": response.headers["etag"]})
            ).status_code == 304
            # Every relative import of a module names a file that is served.
            if url.endswith(".js"):
                for target in re.findall(r'from "(\.{1,2}/[^"]+)"', response.text):
                    resolved = httpx.URL(hub.http_url + url).join(target)
                    assert (await http.get(resolved)).status_code == 200, (url, target)
        # A page from before an upgrade gets today's files, not cached under the old name.
        stale = await http.get("/static/000000000000/js/app.js")
        assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
        for missing in (
            f"/static/{version}/nope.js",
            f"/static/{version}/__init__.py",
            f"/static/{version}/index.html",
            f"/static/{version}/%2e%2e/__init__.py",
        ):
            assert (await http.get(missing)).status_code == 404, missing


async def test_password_sign_in_sets_the_session_cookie_and_sign_out_clears_it(
    dash_hub: Any,
) -> None:
    async with dash_hub() as hub:
        origin = {"Origin": hub.http_url}
        async with httpx.AsyncClient(base_url=hub.http_url) as http:
            wrong = await http.post(
                "/api/auth/login", json={"username": "olivia", "password": "nope"}, headers=origin
            )
            assert wrong.status_code == 401
            assert wrong.json()["error"]["code"] == "invalid_credentials"
            assert "set-cookie" not in wrong.headers
            unknown = await http.post(
                "/api/auth/login", json={"username": "nobody", "password": "nope"}
            )
            assert unknown.status_code == 401 and unknown.json() == wrong.json()
            foreign = await http.post(
                "/api/auth/login",
                json={"username": "olivia", "password": PASSWORD},
                headers={"Origin": "http://evil.example"},
            )
            assert foreign.status_code == 403
            assert foreign.json()["error"]["code"] == "origin_not_allowed"
            ok = await http.post(
                "/api/auth/login", json={"username": "olivia", "password": PASSWORD}, headers=origin
            )
            assert ok.status_code == 200
            body = ok.json()
            assert {k: body[k] for k in ("subject", "tenant", "role")} == {
                "subject": "olivia",
                "tenant": "default",
                "role": "operator",
            }
            cookie = ok.headers["set-cookie"]
            assert cookie.startswith("fieldlink_session=")
            for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
                assert attribute.lower() in cookie.lower(), (attribute, cookie)
            me = await http.get("/api/me")
            assert me.status_code == 200 and me.json()["subject"] == "olivia"
            out = await http.post("/api/auth/logout", headers=origin)
            assert out.status_code == 204
            assert (
                'fieldlink_session=""' in out.headers["set-cookie"]
                or "Max-Age=0" in out.headers["set-cookie"]
            )
            assert (await http.get("/api/me")).status_code == 401
            # A form post works too (the page sends JSON).
            form = await http.post(
                "/api/auth/login", data={"username": "victor", "password": PASSWORD}
            )
            assert form.status_code == 200 and form.json()["role"] == "viewer"


def test_web_files_ship_in_the_package_and_uplot_is_as_fetched() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["fieldlink"]
    package = ROOT / "src" / "fieldlink"
    for path in WEB.rglob("*"):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(package).as_posix()
        # setuptools globs: "*" stays within one directory.
        assert any(
            fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns
        ), f"{relative} is not in package-data"
    manifest = json.loads((WEB / "vendor" / "vendored.json").read_text())["uplot"]
    for name, entry in manifest["files"].items():
        digest = hashlib.sha256((WEB / "vendor" / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"vendor/{name} differs from uplot@{manifest['version']}"
    header = (WEB / "vendor" / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{manifest['version']})" in header
    assert "MIT License" in (WEB / "vendor" / "uPlot.LICENSE.txt").read_text()
