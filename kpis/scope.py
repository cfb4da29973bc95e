"""Scope: the org units a user may see, and what the user's role may do. Pure, no I/O."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ROLES = ("manager", "duty", "analyst", "admin")
ACTIONS = ("view", "export", "acknowledge", "silence", "admin")

# What each role may do; admin may do everything, including users and settings.
ROLE_ACTIONS: Mapping[str, frozenset[str]] = MappingProxyType({
    "manager": frozenset({"view"}),
    "duty": frozenset({"view", "acknowledge", "silence"}),
    "analyst": frozenset({"view", "export"}),
    "admin": frozenset(ACTIONS),
})

# A grant on this marker covers the whole tree: the first admin gets it when no org tree exists yet.
ROOT_ORG = "*"

_NO_TREE: Mapping[str, frozenset[str]] = MappingProxyType({})


@dataclass(frozen=True)
class Scope:
    """Who is asking, with which role, and the authorised units (own org and all descendants)."""

    user: str | None
    role: str | None
    org_nos: frozenset[str]
    # For each authorised unit: itself and its descendants. Filled by scope_for(); a Scope built
    # by hand without it authorises a requested unit alone, never its subtree.
    subtree: Mapping[str, frozenset[str]] = field(default_factory=lambda: _NO_TREE, compare=False, hash=False,
                                                  repr=False)


EMPTY_SCOPE = Scope(user=None, role=None, org_nos=frozenset())


def scope_for(user: str | None, role: str | None, org_no: str | None,
              ancestor_rows: Iterable[tuple[str, str]]) -> Scope:
    """Scope of a user bound to `org_no`, from (org_no, ancestor_no) pairs incl. self-pairs."""
    if not user or role not in ROLE_ACTIONS or not org_no:
        return EMPTY_SCOPE
    subtree: dict[str, set[str]] = {}
    below_grant: set[str] = set()
    pairs = [(str(o), str(a)) for o, a in ancestor_rows]
    for unit, ancestor in pairs:
        if ancestor == org_no or org_no == ROOT_ORG:
            below_grant.add(unit)
    if not below_grant:
        # A grant on a unit that is not in the org tree (deleted, mistyped) grants nothing.
        return Scope(user=user, role=role, org_nos=frozenset())
    for unit, ancestor in pairs:
        if unit in below_grant and ancestor in below_grant:
            subtree.setdefault(ancestor, set()).add(unit)
    for unit in below_grant:
        subtree.setdefault(unit, set()).add(unit)
    frozen = MappingProxyType({k: frozenset(v) for k, v in subtree.items()})
    return Scope(user=user, role=role, org_nos=frozenset(below_grant), subtree=frozen)


def authorise(scope: Scope, requested: str | None) -> tuple[str, ...]:
    """Sorted units to read: requested unit and its descendants ∩ scope; None = whole scope."""
    if requested is None or requested == "":
        return tuple(sorted(scope.org_nos))
    if not isinstance(requested, str) or requested not in scope.org_nos:
        return ()
    units = scope.subtree.get(requested, frozenset({requested}))
    return tuple(sorted(units & scope.org_nos))


def can(scope: Scope, action: str) -> bool:
    """True when the scope's role may perform `action` (view, export, acknowledge, silence, admin)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
    if not scope.user or scope.role is None:
        return False
    return action in ROLE_ACTIONS.get(scope.role, frozenset())
