"""Import boundaries and wiring rules (STYLE.md): the core does no I/O; services import no web,
gateway or transport code; the REST API never reaches for the runtime; MQTT hands messages to
ports, not services; only the wiring picks backends; and nothing is patched onto an object
after it is built."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "fieldlink"
CORE_BANNED = {"asyncio", "socket", "sqlite3", "gmqtt", "paho", "httpx", "fastapi", "starlette",
               "uvicorn", "websockets", "threading", "subprocess", "time", "os", "fieldlink.gateway",
               "fieldlink.services", "fieldlink.backends", "fieldlink.api", "fieldlink.app",
               "fieldlink.mqtt"}
SERVICES_BANNED = {"fastapi", "starlette", "uvicorn", "websockets", "gmqtt", "fieldlink.gateway",
                   "fieldlink.api", "fieldlink.app", "fieldlink.mqtt", "fieldlink.backends"}
API_BANNED = {"fieldlink.app", "fieldlink.backends", "fieldlink.mqtt"}
MQTT_BANNED = {"fieldlink.services", "fieldlink.gateway", "fieldlink.api", "fieldlink.app",
               "fieldlink.backends"}
GATEWAY_BANNED = {"fieldlink.app", "fieldlink.api", "fieldlink.backends", "fieldlink.mqtt"}
WIRING = SRC / "app" / "wiring.py"


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


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).glob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    assert offending(path, CORE_BANNED) == []


@pytest.mark.parametrize("path", modules("services"), ids=lambda p: p.name)
def test_services_have_no_web_or_transport_imports(path: Path) -> None:
    assert offending(path, SERVICES_BANNED) == []


@pytest.mark.parametrize("path", modules("api"), ids=lambda p: p.name)
def test_api_gets_dependencies_not_the_runtime(path: Path) -> None:
    assert offending(path, API_BANNED) == []


@pytest.mark.parametrize("path", modules("mqtt"), ids=lambda p: p.name)
def test_mqtt_hands_messages_to_ports_not_services(path: Path) -> None:
    assert offending(path, MQTT_BANNED) == []


@pytest.mark.parametrize("path", modules("gateway"), ids=lambda p: p.name)
def test_gateway_renders_events_without_transports_or_backends(path: Path) -> None:
    assert offending(path, GATEWAY_BANNED) == []


def test_only_the_wiring_imports_backends() -> None:
    importers = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if path.parent.name != "backends" and path != WIRING
        and offending(path, {"fieldlink.backends"})
    ]
    assert importers == []


# ---- nothing patched on after construction -------------------------------------------------

HOOK_NAMES = ("on_", "handler", "callback", "hook", "authorize", "limiter", "publish")


def foreign_assignments(path: Path) -> list[str]:
    """Callbacks assigned onto an object other than ``self``: a function, method, lambda or
    limiter put on someone else's attribute, or anything put on an attribute named like a
    hook (``on_*``, ``*_handler``, ``authorize``...). One exception: inside ``__init__`` a
    component may set the callbacks of the third-party client it has just built
    (``self.client.on_connect = self._on_connect``: gmqtt's API). A reader who follows a call
    must never hit an attribute someone else assigned."""
    tree = ast.parse(path.read_text())
    module_functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    found: list[str] = []

    def callable_value(value: ast.expr, methods: set[str], params: dict[str, str]) -> bool:
        if isinstance(value, ast.Lambda):
            return True
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            return value.value.id == "self" and value.attr in methods
        if isinstance(value, ast.Name):
            annotation = params.get(value.id, "")
            return value.id in module_functions or any(
                word in annotation for word in ("Callable", "Handler", "Fn", "Limiter"))
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            return value.func.id.endswith("Limiter")
        return False

    def visit(node: ast.AST, function: str, methods: set[str], params: dict[str, str]) -> None:
        for child in ast.iter_child_nodes(node):
            child_function, child_methods, child_params = function, methods, params
            if isinstance(child, ast.ClassDef):
                child_methods = {n.name for n in child.body
                                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                child_function = child.name
                args = child.args.args + child.args.kwonlyargs
                child_params = {a.arg: ast.unparse(a.annotation) if a.annotation else ""
                                for a in args}
            if isinstance(child, ast.Assign | ast.AnnAssign) and child.value is not None:
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    if not isinstance(target, ast.Attribute):
                        continue
                    base = target.value
                    if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                        continue
                    chain = base
                    while isinstance(chain, ast.Attribute) and not (
                        isinstance(chain.value, ast.Name) and chain.value.id == "self"
                    ):
                        chain = chain.value
                    own_client = isinstance(chain, ast.Attribute) and chain.attr == "client"
                    if own_client and function == "__init__":
                        continue
                    hook_name = any(word in target.attr for word in HOOK_NAMES)
                    if hook_name or callable_value(child.value, methods, params):
                        found.append(f"{path.relative_to(SRC)}:{child.lineno} "
                                     f"{ast.unparse(target)}")
            visit(child, child_function, child_methods, child_params)

    visit(tree, "", set(), {})
    return found


def callback_registrations(path: Path) -> list[str]:
    """``x.on_something.append(...)``: a callback list filled from outside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend")
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr.startswith("on_")):
            found.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_no_callback_attributes_are_assigned_after_construction() -> None:
    paths = sorted(SRC.rglob("*.py"))
    assert [hit for path in paths for hit in foreign_assignments(path)] == []
    assert [hit for path in paths for hit in callback_registrations(path)] == []


def test_the_guards_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncio\nfrom fieldlink.gateway.hub import Hub\n"
        "class Runtime:\n"
        "    def __init__(self, hub):\n"
        "        self.client.on_connect = self.go\n"  # allowed: its own third-party client
        "        hub.on_command = self.command\n"  # patched onto a collaborator
        "        self.ingestor.credential_tenant = self.go\n"  # the same, in the wiring
        "    def go(self):\n"
        "        pass\n"
        "    def start(self):\n"
        "        self.ingestor.ack_handler = self.ack\n"  # patched after construction
        "        self.bus.on_reconnect.append(self.rebuild)\n"
    )
    assert offending(bad, CORE_BANNED) == ["asyncio", "fieldlink.gateway.hub"]
    hits = [hit.split(" ", 1)[1] for hit in foreign_assignments_at(bad)]
    assert hits == ["hub.on_command", "self.ingestor.credential_tenant",
                    "self.ingestor.ack_handler"]
    assert [h.split(" ", 1)[1] for h in callback_registrations_at(bad)] == [
        "self.bus.on_reconnect.append"]


def foreign_assignments_at(path: Path) -> list[str]:
    return [hit.replace(str(path.relative_to(path.parent)), "") for hit in _rel(foreign_assignments, path)]


def callback_registrations_at(path: Path) -> list[str]:
    return _rel(callback_registrations, path)


def _rel(check: object, path: Path) -> list[str]:
    global SRC
    saved, SRC = SRC, path.parent
    try:
        return check(path)  # type: ignore[operator,no-any-return]
    finally:
        SRC = saved
