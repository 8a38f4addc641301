"""Agent proposals and the per-tenant approval policy (docs/vpp.md#agents).

Every agent action is a proposal (a document of kind ``vpp.proposal``) with its reason and
expected effect. Under the ``auto`` policy it is approved by the policy as soon as it is made;
under ``manual`` it waits for an operator's approve or reject (REST or WebSocket) until it
expires. A decision is a compare-and-set on the proposal's ``version``, so of several
instances (or operators) deciding at once exactly one wins, and only the winner executes the
approved action: a proposal is executed at most once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from fieldlink.core.access import Principal, can_command, can_read
from fieldlink.core.errors import Conflict, FieldlinkError, Forbidden, NotFound, ValidationError
from fieldlink.core.events import ProposalChanged
from fieldlink.core.measures import Measure
from fieldlink.core.vpp import Approval, ProposalState, decided, finished, new_proposal
from fieldlink.ports import Bus, Store
from fieldlink.services.dispatch import DispatchService

log = logging.getLogger("fieldlink.vpp")

KIND = "vpp.proposal"
POLICY_KIND = "vpp.policy"
MIN_EXPIRE_S, MAX_EXPIRE_S = 10, 7 * 86_400


def new_proposal_id(now_ms: int) -> str:
    return f"p-{now_ms:013d}-{secrets.token_hex(3)}"


class ProposalService:
    def __init__(
        self,
        *,
        store: Store,
        bus: Bus,
        dispatches: DispatchService,
        clock_ms: Callable[[], int],
        default_approval: Approval = Approval.MANUAL,
        default_expire_s: int = 900,
    ) -> None:
        self.store = store
        self.bus = bus
        self.dispatches = dispatches
        self.clock_ms = clock_ms
        self.default_approval = default_approval
        self.default_expire_s = default_expire_s
        self.made = 0
        self.executed = 0

    # ---- policy -----------------------------------------------------------------------------

    async def policy(self, tenant_id: str) -> dict[str, Any]:
        """``{"tenant", "approval": "auto"|"manual", "expire_s"}`` (the defaults until set)."""
        stored = await self.store.get_doc(POLICY_KIND, tenant_id)
        return {
            "tenant": tenant_id,
            "approval": (stored or {}).get("approval", str(self.default_approval)),
            "expire_s": (stored or {}).get("expire_s", self.default_expire_s),
        }

    async def set_policy(self, tenant_id: str, body: Any, by: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValidationError("bad_body", "send {approval, expire_s?}", "$")
        current = await self.policy(tenant_id)
        approval = body.get("approval", current["approval"])
        if approval not in tuple(Approval):
            raise ValidationError("invalid_approval", "approval is auto or manual", "$.approval")
        expire_s = body.get("expire_s", current["expire_s"])
        if (
            isinstance(expire_s, bool)
            or not isinstance(expire_s, int)
            or not MIN_EXPIRE_S <= expire_s <= MAX_EXPIRE_S
        ):
            raise ValidationError(
                "invalid_expire", "expire_s is whole seconds from 10 to 7 days", "$.expire_s"
            )
        policy = {"approval": approval, "expire_s": expire_s, "by": by, "at": self.clock_ms()}
        await self.store.put_doc(POLICY_KIND, tenant_id, policy)
        return {"tenant": tenant_id, "approval": approval, "expire_s": expire_s}

    # ---- proposals ----------------------------------------------------------------------------

    async def propose(
        self,
        *,
        tenant_id: str,
        agent: str,
        action: dict[str, Any],
        reason: str,
        expected: dict[str, Any],
        proposal_id: str | None = None,
        expires_ms: int | None = None,
    ) -> dict[str, Any] | None:
        """Make a proposal (once per ``proposal_id``: None if it exists already), and
        execute it at once under the ``auto`` policy. It expires after the policy's time, or
        at ``expires_ms`` if that is sooner (a proposal about a dispatch ends with it)."""
        now_ms = self.clock_ms()
        policy = await self.policy(tenant_id)
        expire_ms = int(policy["expire_s"]) * 1000
        if expires_ms is not None:
            expire_ms = max(0, min(expire_ms, expires_ms - now_ms))
        proposal = new_proposal(
            proposal_id=proposal_id or new_proposal_id(now_ms),
            tenant_id=tenant_id,
            agent=agent,
            action=action,
            reason=reason,
            expected=expected,
            now_ms=now_ms,
            expire_ms=expire_ms,
        )
        if not await self.store.swap_doc(KIND, proposal["id"], proposal, None):
            return None
        self.made += 1
        self._publish(proposal)
        if policy["approval"] == Approval.AUTO:
            return await self._decide(proposal, approve=True, who="policy:auto")
        return proposal

    async def get(self, proposal_id: str, principal: Principal | None = None) -> dict[str, Any]:
        doc = await self.store.get_doc(KIND, proposal_id)
        if doc is None or (principal is not None and not can_read(principal, doc["tenant"])):
            raise NotFound(f"no proposal {proposal_id!r}")
        return doc

    async def list_proposals(
        self, tenant_id: str | None, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first."""
        docs = [d for _, d in await self.store.list_docs(KIND)]
        chosen = [
            d
            for d in docs
            if (tenant_id is None or d["tenant"] == tenant_id)
            and (state is None or d["state"] == state)
        ]
        return sorted(chosen, key=lambda d: (d["created"], d["id"]), reverse=True)[:limit]

    async def decide(
        self, proposal_id: str, principal: Principal, approve: bool, note: str | None = None
    ) -> dict[str, Any]:
        """An operator's approve or reject. ``Conflict`` (``proposal_decided``) when it was
        decided already or has expired; ``Forbidden`` without the operator role."""
        proposal = await self.get(proposal_id, principal)
        if not can_command(principal, proposal["tenant"]):
            raise Forbidden("your role may not decide proposals", code="forbidden")
        if note is not None and (not isinstance(note, str) or len(note) > 1000):
            raise ValidationError("invalid_note", "note is a string of up to 1000 characters")
        return await self._decide(proposal, approve=approve, who=principal.subject, note=note)

    async def _decide(
        self, proposal: dict[str, Any], *, approve: bool, who: str, note: str | None = None
    ) -> dict[str, Any]:
        now_ms = self.clock_ms()
        if proposal["state"] != ProposalState.PENDING:
            raise Conflict(
                f"proposal {proposal['id']} is {proposal['state']}", code="proposal_decided"
            )
        if now_ms > proposal["expires"]:
            await self._expire(proposal)
            raise Conflict(f"proposal {proposal['id']} has expired", code="proposal_decided")
        state = ProposalState.APPROVED if approve else ProposalState.REJECTED
        after = decided(proposal, state, who, now_ms)
        if note:
            after["note"] = note
        if not await self.store.swap_doc(KIND, proposal["id"], after, proposal["version"]):
            current = await self.get(proposal["id"])
            raise Conflict(
                f"proposal {proposal['id']} is {current['state']}", code="proposal_decided"
            )
        self._publish(after)
        if approve:
            return await self._execute(after)
        return after

    async def _execute(self, proposal: dict[str, Any]) -> dict[str, Any]:
        """Carry out an approved proposal (only the instance whose approval won gets here)."""
        action = proposal["action"]
        result: dict[str, Any] | None = None
        error: str | None = None
        by = f"agent:{proposal['agent']} (proposal {proposal['id']}, {proposal['decided_by']})"
        try:
            kind = action.get("type")
            if kind == "dispatch":
                # Approved after its planned start: it still ends when planned.
                duration_s, start_ms = action["duration_s"], action.get("start_ms")
                late_s = (self.clock_ms() - start_ms) / 1000 if start_ms is not None else 0.0
                if late_s > 0:
                    duration_s, start_ms = duration_s - late_s, None
                if duration_s < 1:
                    raise Conflict("its window has passed", code="window_passed")
                dispatch = await self.dispatches.request(
                    tenant_id=proposal["tenant"],
                    target_kw=action["target_kw"],
                    duration_s=round(duration_s, 3),
                    start_ms=start_ms,
                    requested_by=by,
                    source=f"agent:{proposal['agent']}",
                    proposal_id=proposal["id"],
                )
                result = {"dispatch_id": dispatch["id"]}
            elif kind == "rebalance":
                await self.dispatches.rebalance(action["dispatch_id"], by)
                result = {"dispatch_id": action["dispatch_id"]}
            elif kind == "stop":
                await self.dispatches.cancel(action["dispatch_id"], by, proposal["reason"])
                result = {"dispatch_id": action["dispatch_id"]}
            else:
                error = f"unknown action {kind!r}"
        except FieldlinkError as exc:
            error = exc.message
        after = finished(proposal, result, error)
        if await self.store.swap_doc(KIND, proposal["id"], after, proposal["version"]):
            self.executed += 1
            self._publish(after)
            return after
        return await self.get(proposal["id"])

    async def expire_due(self) -> int:
        """Pending proposals past their time become ``expired`` (the agents' leader)."""
        now_ms = self.clock_ms()
        count = 0
        for _, proposal in await self.store.list_docs(KIND):
            if proposal["state"] == ProposalState.PENDING and now_ms > proposal["expires"]:
                count += await self._expire(proposal)
        return count

    async def _expire(self, proposal: dict[str, Any]) -> int:
        after = decided(proposal, ProposalState.EXPIRED, "expiry", self.clock_ms())
        if await self.store.swap_doc(KIND, proposal["id"], after, proposal["version"]):
            self._publish(after)
            return 1
        return 0

    def _publish(self, proposal: dict[str, Any]) -> None:
        self.bus.publish(ProposalChanged(proposal["tenant"], dict(proposal)))

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_vpp_proposals_made", "Agent proposals made here", "counter", self.made
        )
        yield Measure(
            "fieldlink_vpp_proposals_executed",
            "Approved proposals executed here",
            "counter",
            self.executed,
        )
