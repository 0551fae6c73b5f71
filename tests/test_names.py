"""Name validation: valid names round-trip, traversal and malformed names are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync.errors import InvalidInput, InvalidName
from asyncsync.names import (
    MAX_NAMESPACE_DEPTH,
    AuthId,
    BackupType,
    GroupId,
    Namespace,
    SnapshotId,
    check_archive_name,
    check_digest,
    format_time,
    parse_time,
    safe_id,
)

ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,40}", fullmatch=True).filter(lambda s: ".." not in s)
ns_parts = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}", fullmatch=True).filter(lambda s: ".." not in s)
times = st.integers(0, 253402300799)

TRAVERSAL = [
    "..",
    ".",
    "../x",
    "a/..",
    "a/../b",
    ".hidden",
    "/abs",
    "a/b",
    "",
    "a\0b",
    "a b",
    "x" * 200,
    "...",
]


@given(st.sampled_from(list(BackupType)), ids, times)
@settings(max_examples=100, deadline=None)
def test_snapshot_round_trip(btype: BackupType, bid: str, t: int) -> None:
    snap = SnapshotId(GroupId(btype, bid), t)
    assert SnapshotId.parse(str(snap)) == snap
    assert GroupId.parse(str(snap.group)) == snap.group
    assert snap.rel_path() == f"{btype.value}/{bid}/{format_time(t)}"
    assert parse_time(format_time(t)) == t


@given(st.lists(ns_parts, max_size=MAX_NAMESPACE_DEPTH))
@settings(max_examples=100, deadline=None)
def test_namespace_round_trip(parts: list[str]) -> None:
    ns = Namespace(tuple(parts))
    assert Namespace.parse(str(ns)) == ns
    assert ns.rel_path() == "/".join(f"ns/{p}" for p in parts)
    assert ".." not in ns.rel_path().split("/")


@given(st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_arbitrary_text_never_yields_a_traversing_path(text: str) -> None:
    for parse in (lambda v: GroupId.parse(f"vm/{v}").rel_path(), lambda v: Namespace.parse(v).rel_path()):
        try:
            path = parse(text)
        except InvalidName:
            continue
        parts = path.split("/")
        assert (".." not in parts and "." not in parts and "" not in parts[:-1]) or path == ""
        assert not any(p.startswith(".") for p in parts)


@pytest.mark.parametrize("bad", TRAVERSAL)
def test_bad_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        GroupId(BackupType.VM, bad)
    with pytest.raises(InvalidName):
        safe_id(bad)
    with pytest.raises(InvalidName):
        check_archive_name(bad + ".didx" if bad else "")


@pytest.mark.parametrize(
    "bad", ["vm/../x", "vm/..", "disk/100", "vm", "vm/100/extra/x", "/vm/100", "VM/100", "vm/.x"]
)
def test_bad_groups_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        GroupId.parse(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "vm/100/..",
        "vm/../2026-01-01T00:00:00Z",
        "vm/100/2026-13-01T00:00:00Z",
        "vm/100/2026-01-01T00:00:00",  # no zone
        "vm/100/yesterday",
        "vm/100/2026-01-01T00:00:00Z/x",
    ],
)
def test_bad_snapshots_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        SnapshotId.parse(bad)


@pytest.mark.parametrize(
    "bad", ["../a", "a/../b", "a//b", "/a", "a/", ".a", "a/.b", "a/b c", "/".join("a" * 8)]
)
def test_bad_namespaces_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        Namespace.parse(bad)


def test_namespace_depth_limit() -> None:
    Namespace(("a",) * MAX_NAMESPACE_DEPTH)
    with pytest.raises(InvalidName, match="deeper"):
        Namespace(("a",) * (MAX_NAMESPACE_DEPTH + 1))


def test_rfc3339_with_offset() -> None:
    assert parse_time("2026-11-26T09:00:00+01:00") == parse_time("2026-11-26T08:00:00Z")


@pytest.mark.parametrize("value", ["root@pam", "sync@pbs!token1", "a.b-c@my-realm"])
def test_auth_id_round_trip(value: str) -> None:
    assert str(AuthId.parse(value)) == value


@pytest.mark.parametrize(
    "bad", ["root", "@pam", "root@", "ro ot@pam", "root@pam!", "root@pam!../x", "a/b@pam"]
)
def test_bad_auth_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        AuthId.parse(bad)


def test_digest_and_archive_names() -> None:
    check_digest("a" * 64)
    for bad in ["A" * 64, "a" * 63, "g" * 64, "../" + "a" * 61]:
        with pytest.raises(InvalidName):
            check_digest(bad)
    assert check_archive_name("root.didx") == "root.didx"
    for bad in ["root.tar", "../root.didx", "a/b.didx", ".didx", "x.fidx/"]:
        with pytest.raises(InvalidName):
            check_archive_name(bad)


def test_invalid_name_is_invalid_input_with_exit_code_2() -> None:
    with pytest.raises(InvalidInput) as info:
        BackupType.parse("disk")
    assert info.value.exit_code == 2
    assert "disk" in str(info.value)


@given(
    st.integers(0, 9999),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
)
@settings(max_examples=300, deadline=None)
def test_parse_time_agrees_with_strptime(y: int, mo: int, d: int, h: int, mi: int, s: int) -> None:
    """The positional parse accepts exactly what ``strptime`` accepted, with the same value:
    impossible dates and times (month 13, 30 February, second 60) are refused."""
    from datetime import UTC, datetime

    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"
    try:
        want: int | None = int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(InvalidName):
            parse_time(text)
    else:
        assert parse_time(text) == want


@pytest.mark.parametrize("bad", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z"])
def test_parse_time_refuses_impossible_times(bad: str) -> None:
    with pytest.raises(InvalidName, match="invalid backup time"):
        parse_time(bad)
