"""Scope arithmetic on the hand-made tree of conftest.py (C0 → X1 → S1 → G1, C0 → X2 → S2 → G2)."""
from __future__ import annotations

import pytest

from kpis.scope import EMPTY_SCOPE, ROOT_ORG, Scope, authorise, can, scope_for

PAIRS = [("C0", "C0"), ("X1", "X1"), ("X1", "C0"), ("S1", "S1"), ("S1", "X1"), ("S1", "C0"),
         ("G1", "G1"), ("G1", "S1"), ("G1", "X1"), ("G1", "C0"), ("X2", "X2"), ("X2", "C0"),
         ("S2", "S2"), ("S2", "X2"), ("S2", "C0"), ("G2", "G2"), ("G2", "S2"), ("G2", "X2"),
         ("G2", "C0")]


def test_county_user_gets_the_county_and_everything_below_it_grids_included():
    scope = scope_for("mgr1", "manager", "X1", PAIRS)
    assert scope.org_nos == frozenset({"X1", "S1", "G1"})


def test_root_user_gets_every_unit():
    assert scope_for("boss", "admin", "C0", PAIRS).org_nos == frozenset(
        {"C0", "X1", "S1", "G1", "X2", "S2", "G2"})
    assert scope_for("boss", "admin", ROOT_ORG, PAIRS).org_nos == frozenset(
        {"C0", "X1", "S1", "G1", "X2", "S2", "G2"})


def test_grant_on_a_unit_missing_from_the_tree_grants_nothing():
    assert scope_for("ghost", "manager", "X9", PAIRS).org_nos == frozenset()


@pytest.mark.parametrize(("user", "role", "org"), [(None, "manager", "X1"), ("u", None, "X1"),
                                                   ("u", "superuser", "X1"), ("u", "manager", "")])
def test_no_user_or_unknown_role_or_no_org_is_the_empty_scope(user, role, org):
    assert scope_for(user, role, org, PAIRS) == EMPTY_SCOPE


@pytest.mark.parametrize(("requested", "expected"), [
    (None, ("G1", "S1", "X1")),          # no filter: the whole scope, sorted
    ("X1", ("G1", "S1", "X1")),
    ("S1", ("G1", "S1")),                # a drill-down keeps the subtree
    ("G1", ("G1",)),
    ("X2", ()),                          # a sibling county: nothing
    ("G2", ()),
    ("C0", ()),                          # the parent: nothing, not even the user's own part
    ("X1' OR '1'='1", ()),
    ("", ("G1", "S1", "X1")),
])
def test_authorise_intersects_the_requested_subtree_with_the_scope(requested, expected):
    assert authorise(scope_for("mgr1", "manager", "X1", PAIRS), requested) == expected


def test_empty_scope_authorises_nothing():
    assert authorise(EMPTY_SCOPE, None) == ()
    assert authorise(EMPTY_SCOPE, "X1") == ()


def test_hand_built_scope_authorises_the_requested_unit_alone():
    scope = Scope("u", "manager", frozenset({"X1", "S1"}))
    assert authorise(scope, "X1") == ("X1",)
    assert authorise(scope, None) == ("S1", "X1")


@pytest.mark.parametrize(("role", "allowed"), [
    ("manager", {"view"}),
    ("duty", {"view", "acknowledge", "silence"}),
    ("analyst", {"view", "export"}),
    ("admin", {"view", "export", "acknowledge", "silence", "admin"}),
])
def test_each_role_may_do_exactly_its_actions(role, allowed):
    scope = scope_for("u", role, "X1", PAIRS)
    actions = {"view", "export", "acknowledge", "silence", "admin"}
    assert {a for a in actions if can(scope, a)} == allowed


def test_nobody_may_do_anything_without_a_user():
    assert not any(can(EMPTY_SCOPE, a) for a in ("view", "export", "acknowledge", "silence", "admin"))


def test_unknown_action_is_an_error_naming_it():
    with pytest.raises(ValueError, match="delete"):
        can(EMPTY_SCOPE, "delete")


def test_scopes_are_hashable_for_cache_keys():
    assert hash(scope_for("mgr1", "manager", "X1", PAIRS)) == hash(
        Scope("mgr1", "manager", frozenset({"X1", "S1", "G1"})))
