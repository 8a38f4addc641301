"""Import boundaries (STYLE.md): the core does no I/O; services import no web or gateway code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "fieldlink"
CORE_BANNED = {"asyncio", "socket", "sqlite3", "gmqtt", "paho", "httpx", "fastapi", "starlette",
               "uvicorn", "websockets", "threading", "subprocess", "time", "os", "fieldlink.gateway",
               "fieldlink.services", "fieldlink.backends", "fieldlink.api", "fieldlink.app",
               "fieldlink.mqtt"}
SERVICES_BANNED = {"fastapi", "starlette", "uvicorn", "websockets", "fieldlink.gateway",
                   "fieldlink.api", "fieldlink.app"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def offending(path: Path, banned: set[str]) -> list[str]:
    return sorted(name for name in imports(path)
                  if any(name == b or name.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("path", sorted((SRC / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    assert offending(path, CORE_BANNED) == []


@pytest.mark.parametrize("path", sorted((SRC / "services").glob("*.py")), ids=lambda p: p.name)
def test_services_have_no_web_imports(path: Path) -> None:
    assert offending(path, SERVICES_BANNED) == []


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom fieldlink.gateway.hub import Hub\n")
    assert offending(bad, CORE_BANNED) == ["asyncio", "fieldlink.gateway.hub"]
