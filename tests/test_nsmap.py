"""Namespace mapping (remote-ns → ns, max-depth, the 7-level limit)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from asyncsync.errors import InvalidInput
from asyncsync.names import Namespace
from asyncsync.sync.nsmap import NamespaceMap

N = Namespace.parse

PROXMOX_REMOTE = [
    N(""),
    N("location_a"),
    N("location_a/department_x"),
    N("location_a/department_x/team_one"),
    N("location_a/department_x/team_two"),
    N("location_a/department_y"),
    N("location_a/department_y/team_one"),
    N("location_a/department_y/team_two"),
    N("location_b"),
]


def test_proxmox_documentation_example() -> None:
    m = NamespaceMap(N("location_a/department_x"), N("location_a_dep_x"))
    assert m.map_all(PROXMOX_REMOTE) == [
        (N("location_a/department_x"), N("location_a_dep_x")),
        (N("location_a/department_x/team_one"), N("location_a_dep_x/team_one")),
        (N("location_a/department_x/team_two"), N("location_a_dep_x/team_two")),
    ]


def test_max_depth_zero_is_the_anchor_only() -> None:
    m = NamespaceMap(N("location_a"), N(""), 0)
    assert m.map_all(PROXMOX_REMOTE) == [(N("location_a"), N(""))]


def test_max_depth_one() -> None:
    m = NamespaceMap(N("location_a"), N("x"), 1)
    assert [str(lo) for _, lo in m.map_all(PROXMOX_REMOTE)] == ["x", "x/department_x", "x/department_y"]


def test_static_depth_overflow_is_refused() -> None:
    with pytest.raises(InvalidInput, match="max-depth"):
        NamespaceMap(N(""), N("a/b/c/d/e"), 3)


def test_unbounded_depth_checks_the_actual_tree() -> None:
    # a shallow remote tree fits under a deep anchor...
    m = NamespaceMap(N(""), N("a/b/c/d/e/f"))
    assert m.map_all([N(""), N("x")])[-1] == (N("x"), N("a/b/c/d/e/f/x"))
    # ...a deeper one is refused, naming the namespace, before anything is mapped
    with pytest.raises(InvalidInput, match="x/y"):
        m.map_all([N(""), N("x"), N("x/y")])


def test_local_scope_for_remove_vanished() -> None:
    m = NamespaceMap(N("r"), N("l"), 1)
    assert m.local_in_scope(N("l"))
    assert m.local_in_scope(N("l/a"))
    assert not m.local_in_scope(N("l/a/b"))
    assert not m.local_in_scope(N("other"))


parts = st.lists(st.sampled_from(["a", "b", "c_1", "d.2"]), max_size=4)


@given(parts, parts, parts)
def test_mapping_keeps_the_relative_path(
    remote_anchor: list[str], local_anchor: list[str], rel: list[str]
) -> None:
    assume(len(remote_anchor) + len(rel) <= 7)
    m = NamespaceMap(Namespace(tuple(remote_anchor)), Namespace(tuple(local_anchor)))
    remote = Namespace(tuple(remote_anchor + rel))
    if len(local_anchor) + len(rel) > 7:
        with pytest.raises(InvalidInput):
            m.map(remote)
    else:
        assert m.map(remote) == Namespace(tuple(local_anchor + rel))
