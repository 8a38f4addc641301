"""The MQTT topic catalogue and ingest routing.

Built-in topics (SPEC §3, prefix configurable, default ``edge``):
``{prefix}/{device}/telemetry``, ``/status``, ``/control``, ``/ack``. Custom routes map a vendor
topic (``SubTronics/data``) to telemetry: where the device id comes from, and a field mapping
(drop, rename, scale - applied in that order). Pure: no client, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from fieldlink.core.errors import ValidationError
from fieldlink.core.model import is_valid_device_id


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    CONTROL = "control"
    ACK = "ack"
    ROUTE = "route"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$`` topics never match
    wildcards."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def validate_filter(topic_filter: str) -> None:
    """Raise ``ValueError`` for a filter that breaks MQTT wildcard placement rules."""
    if not topic_filter or "\x00" in topic_filter:
        raise ValueError("topic filter must be non-empty and contain no NUL")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in {topic_filter!r}")


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """Vendor-to-fieldlink field mapping: ``drop`` names, then ``rename`` old->new, then ``scale``
    (multiply numeric fields, keyed by their new names)."""

    drop: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in obj.items() if k not in self.drop}
        for old, new in self.rename.items():
            if old in out:
                out[new] = out.pop(old)
        for name, factor in self.scale.items():
            value = out.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # Decimal on the shortest repr: 473 * 0.1 gives 47.3, not 47.300000000000004.
                out[name] = float(Decimal(repr(value)) * Decimal(repr(factor)))
        return out


@dataclass(frozen=True, slots=True)
class Route:
    """A custom ingest route.

    ``device_id_from`` is ``"topic:N"`` (0-based topic level) or ``"payload:FIELD"``.
    The id field is removed from the metrics after it is read.
    """

    name: str
    topic: str
    device_id_from: str
    kind: str = "edge"
    mapping: FieldMapping = field(default_factory=FieldMapping)

    def __post_init__(self) -> None:
        validate_filter(self.topic)
        source, _, arg = self.device_id_from.partition(":")
        if source == "topic":
            if not arg.isdigit():
                raise ValueError(
                    f"route {self.name}: device_id_from 'topic:N' needs a level number"
                )
        elif source != "payload" or not arg:
            raise ValueError(
                f"route {self.name}: device_id_from must be 'topic:N' or 'payload:FIELD'"
            )

    def extract(self, topic: str, obj: Any) -> tuple[str, dict[str, Any]]:
        """Return ``(device_id, mapped_object)`` or raise ``ValidationError``."""
        if not isinstance(obj, dict):
            raise ValidationError("not_an_object", "a telemetry record must be a JSON object")
        source, _, arg = self.device_id_from.partition(":")
        body = dict(obj)
        if source == "topic":
            levels = topic.split("/")
            index = int(arg)
            device_id: Any = levels[index] if index < len(levels) else None
        else:
            device_id = body.pop(arg, None)
            if isinstance(device_id, int) and not isinstance(device_id, bool):
                device_id = str(device_id)
        if not is_valid_device_id(device_id):
            raise ValidationError(
                "invalid_device_id",
                f"route {self.name}: device id from {self.device_id_from} is missing or invalid",
                f"$.{arg}" if source == "payload" else "$",
            )
        return device_id, self.mapping.apply(body)


@dataclass(frozen=True, slots=True)
class TopicMatch:
    kind: TopicKind
    device_id: str | None = None
    route: Route | None = None


class TopicScheme:
    """Builds and parses the built-in topics for one prefix, and dispatches custom routes.

    Exact route topics are a dict lookup; wildcard routes are scanned in order (first wins).
    """

    def __init__(self, prefix: str = "edge", routes: tuple[Route, ...] = ()) -> None:
        if not prefix or any(c in prefix for c in "+#\x00") or prefix.endswith("/"):
            raise ValueError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix
        self._levels = prefix.count("/") + 1
        self.routes = routes
        self._exact = {r.topic: r for r in routes if "+" not in r.topic and "#" not in r.topic}
        self._wild = [r for r in routes if r.topic not in self._exact]
        self._memo: dict[str, TopicMatch | None] = {}

    def telemetry(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/telemetry"

    def status(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/status"

    def control(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/control"

    def ack(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/ack"

    def ingest_filters(self) -> list[str]:
        """Every filter the hub subscribes to for ingest."""
        filters = [f"{self.prefix}/+/telemetry", f"{self.prefix}/+/status", f"{self.prefix}/+/ack"]
        filters += [r.topic for r in self.routes]
        return filters

    def match(self, topic: str) -> TopicMatch | None:
        """Classify an incoming topic; None means "not ours" (counted as ``unknown_topic``).

        Results are memoized (devices reuse their topics); the memo is reset past 100k topics.
        """
        try:
            return self._memo[topic]
        except KeyError:
            pass
        if len(self._memo) >= 100_000:
            self._memo.clear()
        result = self._memo[topic] = self._classify(topic)
        return result

    def _classify(self, topic: str) -> TopicMatch | None:
        route = self._exact.get(topic)
        if route is not None:
            return TopicMatch(TopicKind.ROUTE, route=route)
        parts = topic.split("/")
        if len(parts) == self._levels + 2 and topic.startswith(self.prefix + "/"):
            suffix = parts[-1]
            if suffix in ("telemetry", "status", "ack", "control"):
                return TopicMatch(TopicKind(suffix), device_id=parts[-2])
        for route in self._wild:
            if topic_matches(route.topic, topic):
                return TopicMatch(TopicKind.ROUTE, route=route)
        return None


def route_from_config(name: str, cfg: dict[str, Any]) -> Route:
    """Build a Route from one TOML ``[[routes]]`` table (see examples/routes.toml)."""
    mapping_cfg = cfg.get("mapping", {})
    mapping = FieldMapping(
        drop=tuple(mapping_cfg.get("drop", ())),
        rename=dict(mapping_cfg.get("rename", {})),
        scale={k: float(v) for k, v in mapping_cfg.get("scale", {}).items()},
    )
    return Route(
        name=cfg.get("name", name),
        topic=cfg["topic"],
        device_id_from=cfg["device_id_from"],
        kind=cfg.get("kind", "edge"),
        mapping=mapping,
    )
