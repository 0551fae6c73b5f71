"""ACL matrix: for each role on datastore/namespace paths, what a user and its token can list and read.

One installation (built once for the module) holds a case user ``<case>@pbs``
with token ``<case>@pbs!t`` per case; each case runs against a real server on
127.0.0.1 with TLS, through the real client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from serverutil import (
    RunningServer,
    add_datastore,
    add_token,
    add_user,
    grant,
    make_paths,
    running_server,
    write_snapshot,
)

from asyncsync.client import Client
from asyncsync.config.paths import Paths
from asyncsync.errors import PermissionDenied
from asyncsync.names import AuthId, GroupId, Namespace, SnapshotId

# (namespace, snapshot, owner)
DATA = (
    ("", "vm/100/2026-11-20T08:00:00Z", "admin@pbs"),
    ("", "ct/200/2026-11-20T09:00:00Z", "bk@pbs"),
    ("", "host/web/2026-11-20T10:00:00Z", "bk@pbs!t"),
    ("", "host/pu/2026-11-20T11:00:00Z", "pu@pbs"),
    ("a", "vm/300/2026-11-22T08:00:00Z", "admin@pbs"),
    ("a", "ct/301/2026-11-22T08:30:00Z", "bk@pbs"),
    ("a/b", "host/db/2026-11-22T09:00:00Z", "bk@pbs"),
)
ALL = {ns: {s.rsplit("/", 1)[0] for n, s, _ in DATA if n == ns} for ns in ("", "a", "a/b")}
ALL_READ = {(ns, s.rsplit("/", 1)[0]) for ns, s, _ in DATA}
Groups = dict[str, set[str] | None]  # namespace -> visible groups, None: 403


@dataclass
class Case:
    name: str
    #: (ACL path, role, propagate, "user" or "token")
    grants: list[tuple[str, str, bool, str]]
    user_groups: Groups
    token_groups: Groups
    user_read: set[tuple[str, str]] = field(default_factory=set)
    token_read: set[tuple[str, str]] = field(default_factory=set)
    #: namespaces listed from the root (None: 403)
    namespaces: list[str] | None = None
    stores: list[str] = field(default_factory=lambda: ["store"])


def both(
    role: str, path: str = "/datastore/store", propagate: bool = True
) -> list[tuple[str, str, bool, str]]:
    return [(path, role, propagate, "user"), (path, role, propagate, "token")]


DENY: Groups = {"": None, "a": None, "a/b": None}

CASES = [
    Case("audit", both("DatastoreAudit"), ALL, ALL, namespaces=["", "a", "a/b"]),
    Case("reader", both("DatastoreReader"), ALL, ALL, ALL_READ, ALL_READ, namespaces=["", "a", "a/b"]),
    Case(
        "superuser",
        both("Admin", "/"),
        ALL,
        ALL,
        ALL_READ,
        ALL_READ,
        namespaces=["", "a", "a/b"],
        stores=["other", "store"],
    ),
    # Backup alone: only own groups; the user owns its token's groups, the token only its own
    Case(
        "bk",
        both("DatastoreBackup"),
        {"": {"ct/200", "host/web"}, "a": {"ct/301"}, "a/b": {"host/db"}},
        {"": {"host/web"}, "a": set(), "a/b": set()},
        {("", "ct/200"), ("", "host/web"), ("a", "ct/301"), ("a/b", "host/db")},
        {("", "host/web")},
        namespaces=["", "a", "a/b"],
    ),
    Case(
        "pu",
        both("DatastorePowerUser"),
        {"": {"host/pu"}, "a": set(), "a/b": set()},
        {"": set(), "a": set(), "a/b": set()},
        {("", "host/pu")},
        set(),
        namespaces=["", "a", "a/b"],
    ),
    Case(
        "nsreader",
        both("DatastoreReader", "/datastore/store/a"),
        {"": None, "a": ALL["a"], "a/b": ALL["a/b"]},
        {"": None, "a": ALL["a"], "a/b": ALL["a/b"]},
        {r for r in ALL_READ if r[0] in ("a", "a/b")},
        {r for r in ALL_READ if r[0] in ("a", "a/b")},
        namespaces=["a", "a/b"],
    ),
    Case(
        "nsonly",
        both("DatastoreReader", "/datastore/store/a", propagate=False),
        {"": None, "a": ALL["a"], "a/b": None},
        {"": None, "a": ALL["a"], "a/b": None},
        {r for r in ALL_READ if r[0] == "a"},
        {r for r in ALL_READ if r[0] == "a"},
        namespaces=["a"],
    ),
    Case(
        "masked",
        both("DatastoreReader") + both("NoAccess", "/datastore/store/a"),
        {"": ALL[""], "a": None, "a/b": None},
        {"": ALL[""], "a": None, "a/b": None},
        {r for r in ALL_READ if r[0] == ""},
        {r for r in ALL_READ if r[0] == ""},
        namespaces=[""],
    ),
    Case("nothing", [], DENY, DENY, namespaces=None, stores=[]),
    Case(
        "otherstore",
        both("DatastoreReader", "/datastore/other"),
        DENY,
        DENY,
        namespaces=None,
        stores=["other"],
    ),
    # a token never has more than its user: Reader on the token, Audit on the user -> Audit
    Case(
        "tokenlimited",
        [
            ("/datastore/store", "DatastoreAudit", True, "user"),
            ("/datastore/store", "DatastoreReader", True, "token"),
        ],
        ALL,
        ALL,
        namespaces=["", "a", "a/b"],
    ),
    # the token alone has a role, its user none -> nothing
    Case("tokenonly", [("/datastore/store", "DatastoreReader", True, "token")], DENY, DENY, stores=[]),
]


def password(case: str) -> str:
    return f"password-of-{case}"


def user_of(case: str) -> AuthId:
    return AuthId(case, "pbs")


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict[str, str]]:
    base: Path = tmp_path_factory.mktemp("acl")
    paths = make_paths(base)
    store = add_datastore(paths, "store", base / "store")
    add_datastore(paths, "other", base / "other")
    for ns, snap, owner in DATA:
        write_snapshot(store, ns, snap, owner=owner, archives={"root.didx": snap.encode() * 500})
    secrets: dict[str, str] = {}
    for case in CASES:
        uid = add_user(paths, user_of(case.name), password(case.name))
        tokenid, secret = add_token(paths, uid, "t")
        secrets[case.name] = secret
        for path, role, propagate, who in case.grants:
            grant(paths, path, role, uid if who == "user" else tokenid, propagate=propagate)
    return paths, secrets


@pytest.fixture
async def server(install: tuple[Paths, dict[str, str]]) -> AsyncIterator[RunningServer]:
    async with running_server(install[0]) as srv:
        yield srv


async def groups_or_none(client: Client, ns: str) -> set[str] | None:
    try:
        items = await client.list_groups("store", Namespace.parse(ns))
    except PermissionDenied:
        return None
    return {str(g.group) for g in items}


async def snapshot_groups_or_none(client: Client, ns: str) -> set[str] | None:
    try:
        items = await client.list_snapshots("store", Namespace.parse(ns))
    except PermissionDenied:
        return None
    return {str(s.snapshot.group) for s in items}


async def can_read(client: Client, ns: str, snap: str) -> bool:
    sid = SnapshotId.parse(snap)
    try:
        reader = await client.open_reader("store", Namespace.parse(ns), sid)
    except PermissionDenied:
        return False
    async with reader:
        await reader.download("index.json.blob")
        await reader.download("root.didx")
        # the reader rule admits the chunks of the downloaded index
        return True


async def check(client: Client, case: Case, expected: Groups, readable: set[tuple[str, str]]) -> None:
    for ns, groups in expected.items():
        assert await groups_or_none(client, ns) == groups, (case.name, client.auth_id, ns)
        assert await snapshot_groups_or_none(client, ns) == groups, (case.name, client.auth_id, ns)
    got_read = {(ns, snap.rsplit("/", 1)[0]) for ns, snap, _ in DATA if await can_read(client, ns, snap)}
    assert got_read == readable, (case.name, client.auth_id)
    stores = [s["store"] for s in await client.list_datastores()]
    assert stores == case.stores, (case.name, client.auth_id)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_acl_matrix(case: Case, server: RunningServer, install: tuple[Paths, dict[str, str]]) -> None:
    uid = user_of(case.name)
    async with await server.client(uid, password(case.name)) as user:
        await check(user, case, case.user_groups, case.user_read)
        try:
            listed: list[str] | None = [str(n) for n in await user.list_namespaces("store")]
        except PermissionDenied:
            listed = None
        assert listed == case.namespaces
    tokenid = AuthId(uid.user, uid.realm, "t")
    async with await server.client(tokenid, install[1][case.name]) as token:
        await check(token, case, case.token_groups, case.token_read)


async def test_backup_user_cannot_name_a_foreign_group(server: RunningServer) -> None:
    """Asking for one foreign group's snapshots, or opening a reader on it, is refused (403)."""
    async with await server.client(user_of("bk"), password("bk")) as client:
        with pytest.raises(PermissionDenied):
            await client.list_snapshots("store", Namespace(), GroupId.parse("vm/100"))
        own = await client.list_snapshots("store", Namespace(), GroupId.parse("ct/200"))
        assert [str(s.snapshot) for s in own] == ["ct/200/2026-11-20T09:00:00Z"]
        assert own[0].owner == AuthId.parse("bk@pbs")
