"""The configuration API (remotes, sync jobs) against a real server: privileges, digests, secrets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from serverutil import add_datastore, add_token, add_user, grant, make_paths, running_server

from asyncsync.config import remotes, syncjobs
from asyncsync.config.paths import Paths
from asyncsync.names import AuthId

FP = ":".join(["ab"] * 32)
T = TypeVar("T")
PASSWORD = "op-password-1"


async def th(fn: Callable[..., T], *args: Any) -> T:
    """Library calls read files: off the loop the server runs on."""
    return await asyncio.to_thread(fn, *args)


#: user -> [(acl path, role)]; every user gets an API token "t" with the same grants
USERS: dict[str, list[tuple[str, str]]] = {
    "admin": [("/", "Admin")],
    "auditor": [("/", "Audit")],
    # may pull from pbs2 into local, groups owned by itself only
    "op": [("/remote/pbs2", "RemoteSyncOperator"), ("/datastore/local", "DatastoreBackup")],
    # ... and may prune (remove-vanished)
    "power": [("/remote/pbs2", "RemoteSyncOperator"), ("/datastore/local", "DatastorePowerUser")],
    # ... and may hand groups to other owners (Datastore.Modify)
    "dsadmin": [("/remote/pbs2", "RemoteSyncOperator"), ("/datastore/local", "DatastoreAdmin")],
    # no Remote.Read anywhere
    "noremote": [("/datastore/local", "DatastoreAdmin")],
    # no local privileges
    "remoteonly": [("/remote/pbs2", "RemoteSyncOperator")],
    # Remote.Read on one remote datastore only
    "storeop": [("/remote/pbs2/s1", "RemoteSyncOperator"), ("/datastore/local", "DatastoreAdmin")],
    # Datastore.Backup on one local namespace only
    "nsop": [("/remote/pbs2", "RemoteSyncOperator"), ("/datastore/local/a", "DatastoreBackup")],
    # sees remote pbs2 only; may manage remotes below /remote/pbs2 only
    "ra": [("/remote/pbs2", "RemoteAudit")],
    "rmod2": [("/remote/pbs2", "RemoteAdmin")],
    # may create and change any remote
    "rmod": [("/remote", "RemoteAdmin")],
    # sees jobs into local only if it can also audit the remote
    "dsaudit": [("/datastore/local", "DatastoreAudit")],
    "dsraudit": [("/datastore/local", "DatastoreAudit"), ("/remote/pbs2", "RemoteAudit")],
}


@dataclass
class Api:
    """A pinned HTTPS session and the token secret of every test user."""

    session: aiohttp.ClientSession
    base: str
    secrets: dict[str, str]
    #: "<user>-user" callers: headers of a password login (ticket + CSRF token)
    tickets: dict[str, dict[str, str]]

    async def call(
        self, who: str | None, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        headers = {}
        if who in self.tickets:
            headers = self.tickets[who]
        elif who is not None:
            headers["Authorization"] = f"PBSAPIToken={who}@pbs!t:{self.secrets[who]}"
        async with self.session.request(
            method, f"{self.base}/api2/json/config{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()


@pytest.fixture
def local(tmp_path: Path) -> tuple[Paths, dict[str, str]]:
    """The server's installation: datastores local/other, remotes pbs2/pbs3, the USERS."""
    paths = make_paths(tmp_path / "local")
    add_datastore(paths, "local", tmp_path / "ds-local")
    add_datastore(paths, "other", tmp_path / "ds-other")
    for name in ("pbs2", "pbs3"):
        remotes.create_remote(
            paths,
            name,
            {"host": f"{name}.example", "auth-id": "sync@pam", "password": "TOPSECRET", "fingerprint": FP},
        )
    secrets = {}
    for user, grants in USERS.items():
        uid = add_user(paths, f"{user}@pbs", PASSWORD if user == "op" else None)
        tokenid, secret = add_token(paths, uid, "t")
        secrets[user] = secret
        for path, role in grants:
            grant(paths, path, role, uid)
            grant(paths, path, role, tokenid)
    return paths, secrets


@pytest.fixture
async def api(local: tuple[Paths, dict[str, str]]) -> AsyncIterator[Api]:
    paths, secrets = local
    async with running_server(paths) as srv:
        assert srv.fingerprint is not None
        pin = aiohttp.Fingerprint(bytes.fromhex(srv.fingerprint.replace(":", "")))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pin)) as session:
            login = {"username": "op@pbs", "password": PASSWORD}
            async with session.post(f"{srv.url}/api2/json/access/ticket", json=login) as resp:
                assert resp.status == 200
                data = (await resp.json())["data"]
            ticket = {
                "Authorization": f"AsyncSyncTicket={data['ticket']}",
                "CSRFPreventionToken": data["CSRFPreventionToken"],
            }
            yield Api(session, srv.url, secrets, {"op-user": ticket})


def job(**extra: Any) -> dict[str, Any]:
    return {"remote": "pbs2", "remote-store": "s1", "store": "local", **extra}


# (user, job body, expected status) for POST /config/sync
CREATE_MATRIX: list[tuple[str, dict[str, Any], int]] = [
    ("admin", job(), 200),
    # "op" calls with its API token op@pbs!t, "op-user" with a password login as op@pbs
    ("op", job(owner="op@pbs!t"), 200),
    ("op", job(owner="op@pbs"), 403),  # a token may not hand groups to its user
    ("op-user", job(owner="op@pbs"), 200),
    ("op-user", job(owner="op@pbs!t"), 200),  # a token of the caller is the caller's own
    ("op-user", job(), 403),  # owner unset = root@pam: needs Datastore.Modify
    ("op", job(), 403),
    ("op-user", job(owner="dsadmin@pbs"), 403),
    ("op-user", job(owner="op@pbs", **{"remove-vanished": True}), 403),  # needs Datastore.Prune
    ("op-user", job(owner="op@pbs", store="other"), 403),
    ("op-user", job(owner="op@pbs", remote="pbs3"), 403),
    ("power", job(owner="power@pbs!t", **{"remove-vanished": True}), 200),
    ("power", job(**{"remove-vanished": True}), 403),
    ("dsadmin", job(**{"remove-vanished": "1"}), 200),
    ("dsadmin", job(owner="op@pbs"), 200),
    ("noremote", job(), 403),
    ("remoteonly", job(owner="remoteonly@pbs!t"), 403),
    ("storeop", job(), 200),
    ("storeop", job(**{"remote-store": "s2"}), 403),
    ("nsop", job(owner="nsop@pbs!t", ns="a"), 200),
    ("nsop", job(owner="nsop@pbs!t", ns="a/b"), 200),
    ("nsop", job(owner="nsop@pbs!t"), 403),
    ("auditor", job(), 403),
    ("rmod", job(), 403),
]


async def test_sync_job_create_matrix(api: Api, local: tuple[Paths, dict[str, str]]) -> None:
    """One server for the whole matrix (users and tokens are costly to set up)."""
    cfg = local[0].config / "sync.cfg"
    for user, body, status in CREATE_MATRIX:
        code, answer = await api.call(user, "POST", "/sync", {"id": "j1", **body})
        assert code == status, (user, body, answer)
        text = cfg.read_text() if cfg.exists() else ""
        if status == 200:
            assert answer["data"]["id"] == "j1" and "sync: j1" in text
            assert (await api.call("admin", "DELETE", "/sync/j1"))[0] == 200
        else:
            assert answer["error"]["code"] == "forbidden", (user, body, answer)
            assert "sync: j1" not in text


async def test_sync_job_update_delete_and_visibility(api: Api, local: tuple[Paths, dict[str, str]]) -> None:
    paths = local[0]
    assert (await api.call("admin", "POST", "/sync", {"id": "root-job", **job()}))[0] == 200
    assert (await api.call("admin", "POST", "/sync", {"id": "other-job", **job(store="other")}))[0] == 200
    code, ans = await api.call("op", "POST", "/sync", {"id": "op-job", **job(owner="op@pbs!t")})
    assert code == 200, ans

    # the op may change its own job, but not take on a root@pam-owned one or retarget another
    code, ans = await api.call("op", "PUT", "/sync/op-job", {"comment": "mine", "schedule": "daily"})
    assert code == 200 and ans["data"]["comment"] == "mine"
    assert (await api.call("op", "PUT", "/sync/root-job", {"owner": "op@pbs"}))[0] == 403
    assert (await api.call("op", "PUT", "/sync/other-job", {"store": "local", "owner": "op@pbs"}))[0] == 403
    assert (await api.call("op", "PUT", "/sync/op-job", {"remove-vanished": True}))[0] == 403
    assert (await api.call("op", "PUT", "/sync/op-job", {"delete": ["owner"]}))[0] == 403
    assert (await api.call("op", "DELETE", "/sync/root-job"))[0] == 403
    assert (await th(syncjobs.get_job, paths, "op-job")).owner == AuthId.parse("op@pbs!t")

    # visibility: Datastore.Audit on the store AND Remote.Audit on the remote
    def ids(answer: Any) -> list[str]:
        return [j["id"] for j in answer["data"]]

    for who, expected in [
        ("admin", ["op-job", "other-job", "root-job"]),
        ("auditor", ["op-job", "other-job", "root-job"]),
        ("dsraudit", ["op-job", "root-job"]),
        ("dsaudit", []),
        ("ra", []),
        ("op", []),  # Datastore.Backup is not Datastore.Audit
        ("dsadmin", ["op-job", "root-job"]),
    ]:
        code, ans = await api.call(who, "GET", "/sync")
        assert code == 200 and ids(ans) == expected, who
        assert ans["digest"] == (await th(syncjobs.config_file(paths).read)).digest
    code, ans = await api.call("dsraudit", "GET", "/sync/op-job")
    assert code == 200 and ans["data"]["schedule"] == "daily" and len(ans["data"]["digest"]) == 64
    assert (await api.call("dsaudit", "GET", "/sync/op-job"))[0] == 403

    # digests: a stale one is refused and changes nothing
    digest = ans["data"]["digest"]
    assert (await api.call("admin", "PUT", "/sync/op-job", {"comment": "v2", "digest": digest}))[0] == 200
    code, ans = await api.call("admin", "PUT", "/sync/op-job", {"comment": "v3", "digest": digest})
    assert code == 409 and ans["error"]["code"] == "conflict"
    assert (await api.call("admin", "DELETE", f"/sync/op-job?digest={digest}"))[0] == 409
    assert (await th(syncjobs.get_job, paths, "op-job")).comment == "v2"

    # invalid values: 400 naming the field, nothing written
    before = (paths.config / "sync.cfg").read_bytes()
    for body, fld in [
        ({"max-depth": 9}, "max-depth"),
        ({"rate-in": "-1"}, "rate-in"),
        ({"group-filter": ["regex:("]}, "group-filter"),
        ({"schedule": "someday"}, "schedule"),
        ({"remote": "nowhere"}, "remote"),
        ({"store": "nostore"}, "store"),
        ({"delete": "store"}, "delete"),
        ({"transfer-last": -3}, "transfer-last"),
        ({"bogus": 1}, "bogus"),
    ]:
        code, ans = await api.call("admin", "PUT", "/sync/op-job", body)
        assert code == 400 and ans["error"]["message"].startswith(f"{fld}:"), (body, ans)
    assert (paths.config / "sync.cfg").read_bytes() == before

    assert (await api.call("op", "DELETE", "/sync/op-job"))[0] == 200
    assert (await api.call("admin", "GET", "/sync/op-job"))[0] == 404
    assert (await api.call(None, "GET", "/sync"))[0] == 401


async def test_remote_privileges_and_secrets(api: Api, local: tuple[Paths, dict[str, str]]) -> None:
    paths = local[0]

    async def names(who: str) -> list[str]:
        code, ans = await api.call(who, "GET", "/remote")
        assert code == 200
        assert all("password" not in r for r in ans["data"])
        assert "TOPSECRET" not in str(ans)
        return [r["name"] for r in ans["data"]]

    assert await names("admin") == ["pbs2", "pbs3"]
    assert await names("auditor") == ["pbs2", "pbs3"]
    assert await names("ra") == ["pbs2"]
    assert await names("dsadmin") == ["pbs2"]  # RemoteSyncOperator includes Remote.Audit
    assert await names("dsaudit") == []

    code, ans = await api.call("ra", "GET", "/remote/pbs2")
    assert code == 200 and ans["data"]["host"] == "pbs2.example" and "password" not in ans["data"]
    assert ans["data"]["digest"] == (await th(remotes.config_file(paths).read)).digest
    assert (await api.call("ra", "GET", "/remote/pbs3"))[0] == 403
    assert (await api.call("ra", "GET", "/remote/nope"))[0] == 403  # no existence leak
    assert (await api.call("admin", "GET", "/remote/nope"))[0] == 404

    new = {"name": "pbs4", "host": "[::1]", "port": 8008, "userid": "s@pam!t", "password": "pw4"}
    assert (await api.call("ra", "POST", "/remote", new))[0] == 403
    assert (await api.call("rmod2", "POST", "/remote", new))[0] == 403  # needs it on /remote
    assert (await api.call("op", "POST", "/remote", new))[0] == 403
    code, ans = await api.call("rmod", "POST", "/remote", new)
    assert code == 200 and ans["data"]["auth-id"] == "s@pam!t" and "password" not in ans["data"]
    assert await th(remotes.remote_secret, paths, "pbs4") == "pw4"
    assert "pw4" not in (paths.config / "remote.cfg").read_text()
    assert (await api.call("rmod", "POST", "/remote", new))[0] == 409

    # update needs Remote.Modify on /remote/{name}
    assert (await api.call("rmod2", "PUT", "/remote/pbs2", {"comment": "c2"}))[0] == 200
    assert (await api.call("rmod2", "PUT", "/remote/pbs3", {"comment": "c3"}))[0] == 403
    assert (await api.call("ra", "PUT", "/remote/pbs2", {"comment": "x"}))[0] == 403
    assert (await th(remotes.get_remote, paths, "pbs2")).comment == "c2"
    code, ans = await api.call("rmod", "PUT", "/remote/pbs4", {"password": "pw5", "delete": "port"})
    assert code == 200 and ans["data"]["port"] == 8007
    assert await th(remotes.remote_secret, paths, "pbs4") == "pw5"

    # bad values and stale digests change nothing
    before = (paths.config / "remote.cfg").read_bytes()
    code, ans = await api.call("admin", "PUT", "/remote/pbs4", {"fingerprint": "ab:cd"})
    assert code == 400 and ans["error"]["message"].startswith("fingerprint:")
    code, ans = await api.call("admin", "PUT", "/remote/pbs4", {"comment": "x", "digest": "0" * 64})
    assert code == 409
    assert (paths.config / "remote.cfg").read_bytes() == before

    # delete: needs Remote.Modify; refused while a sync job uses the remote
    assert (await api.call("admin", "POST", "/sync", {"id": "uses4", **job(remote="pbs4")}))[0] == 200
    assert (await api.call("rmod2", "DELETE", "/remote/pbs4"))[0] == 403
    code, ans = await api.call("rmod", "DELETE", "/remote/pbs4")
    assert code == 409 and "uses4" in ans["error"]["message"]
    assert (await api.call("admin", "DELETE", "/sync/uses4"))[0] == 200
    assert (await api.call("rmod", "DELETE", "/remote/pbs4"))[0] == 200
    assert not await th(remotes.remote_exists, paths, "pbs4")
    assert "pbs4" not in (paths.config / "remote.shadow").read_text()


async def test_unknown_and_forbidden_ids_answer_alike(api: Api, local: tuple[Paths, dict[str, str]]) -> None:
    """A caller that may not see an object cannot tell an unknown id from a forbidden one."""
    paths = local[0]
    assert (await api.call("admin", "POST", "/sync", {"id": "hidden", **job(store="other")}))[0] == 200
    before = (paths.config / "sync.cfg").read_bytes()

    async def answer(who: str, method: str, path: str, name: str, body: dict[str, Any] | None) -> Any:
        code, ans = await api.call(who, method, path, body)
        # the message may echo the id the caller sent, nothing else may differ
        return code, ans["error"]["code"], ans["error"]["message"].replace(name, "ID")

    requests: list[tuple[str, dict[str, Any] | None]] = [
        ("GET", None),
        ("PUT", {"comment": "x"}),
        ("PUT", {"remote": "nowhere"}),  # would be 400 if checked before the rights
        ("DELETE", None),
    ]
    # dsraudit and dsadmin may see jobs into "local", not into "other"; none may audit every job
    for who in ("op", "dsaudit", "ra", "remoteonly", "dsraudit", "dsadmin", "op-user"):
        for method, body in requests:
            hidden = await answer(who, method, "/sync/hidden", "hidden", body)
            unknown = await answer(who, method, "/sync/nosuch", "nosuch", body)
            assert hidden == unknown, (who, method, hidden, unknown)
            assert hidden[0] == 403 and "other" not in hidden[2], (who, method, hidden)
    assert (paths.config / "sync.cfg").read_bytes() == before

    # a caller that may audit every job learns nothing from a 404
    for who in ("admin", "auditor"):
        for method, body in requests[:2] + requests[3:]:
            code, ans = await api.call(who, method, "/sync/nosuch", body)
            assert code == 404 and ans["error"]["code"] == "not-found", (who, method, ans)
    assert (await api.call("auditor", "PUT", "/sync/hidden", {"comment": "x"}))[0] == 403
    assert (await api.call("auditor", "DELETE", "/sync/hidden"))[0] == 403
    # a caller that may read a job but not change it is told which privilege it lacks
    assert (await api.call("admin", "POST", "/sync", {"id": "seen", **job()}))[0] == 200
    code, ans = await api.call("dsraudit", "PUT", "/sync/seen", {"comment": "x"})
    assert code == 403 and "Datastore.Backup" in ans["error"]["message"]
    assert (paths.config / "sync.cfg").read_bytes() != before  # "seen" was added, nothing else
    assert (await th(syncjobs.get_job, paths, "hidden")).comment == ""

    # remotes: the privilege on /remote/{name} is checked before the lookup
    for who, method, body in [
        ("ra", "GET", None),
        ("rmod2", "PUT", {"comment": "x"}),
        ("rmod2", "DELETE", None),
        ("dsaudit", "GET", None),
    ]:
        hidden = await answer(who, method, "/remote/pbs3", "pbs3", body)
        unknown = await answer(who, method, "/remote/nope", "nope", body)
        assert hidden == unknown and hidden[0] == 403, (who, method, hidden, unknown)
    for method, body in [("GET", None), ("PUT", {"comment": "x"}), ("DELETE", None)]:
        assert (await api.call("rmod", method, "/remote/nope", body))[0] == 404
    assert not (await th(remotes.get_remote, paths, "pbs3")).comment


async def test_create_checks_rights_before_the_id(api: Api, local: tuple[Paths, dict[str, str]]) -> None:
    """POST /config/sync: a taken id tells a caller nothing it could not learn from GET."""
    paths = local[0]
    assert (await api.call("admin", "POST", "/sync", {"id": "hidden", **job(store="other")}))[0] == 200
    assert (await api.call("admin", "POST", "/sync", {"id": "seen", **job()}))[0] == 200
    code, ans = await api.call("op", "POST", "/sync", {"id": "mine", **job(owner="op@pbs!t")})
    assert code == 200, ans
    before = (paths.config / "sync.cfg").read_bytes()

    async def answer(who: str, id: str, body: dict[str, Any]) -> tuple[int, str, str]:
        code, ans = await api.call(who, "POST", "/sync", {"id": id, **body})
        assert "error" in ans, (who, id, ans)
        return code, ans["error"]["code"], ans["error"]["message"].replace(id, "ID")

    # callers without the rights for the new job: the same 403 for a taken and a free id
    for who, body in [
        ("auditor", job()),
        ("dsaudit", job()),
        ("ra", job()),
        ("remoteonly", job(owner="remoteonly@pbs!t")),
        ("noremote", job()),
        ("op", job()),  # root@pam as owner needs Datastore.Modify
        ("dsraudit", job()),  # may read "seen", may not set it up
        ("op", job(remote="nowhere", owner="op@pbs!t")),  # rights before the remote's existence
    ]:
        for taken in ("hidden", "seen", "mine"):
            got = await answer(who, taken, body)
            assert got == await answer(who, "nosuch", body), (who, taken, got)
            assert got[:2] == (403, "forbidden"), (who, taken, got)
            assert "other" not in got[2], (who, got)

    # a caller with the rights who picks the id of a job hidden from it: what GET says for that id
    for who, body in [("op-user", job(owner="op@pbs")), ("dsadmin", job()), ("storeop", job())]:
        got = await answer(who, "hidden", body)
        code, ans = await api.call(who, "GET", "/sync/hidden")
        assert got == (code, ans["error"]["code"], ans["error"]["message"].replace("hidden", "ID"))
        assert got[0] == 403 and "other" not in got[2], (who, got)
    assert (paths.config / "sync.cfg").read_bytes() == before

    # ... and 409 for a job it may see (read it, or set it up: its own job)
    for who, taken, body in [
        ("dsadmin", "seen", job()),
        ("admin", "hidden", job()),
        ("op", "mine", job(owner="op@pbs!t")),
    ]:
        assert await answer(who, taken, body) == (409, "exists", "sync job 'ID' already exists"), who
    assert (paths.config / "sync.cfg").read_bytes() == before
    # with the rights and a free id, a missing remote is still a 400 naming the field
    code, ans = await api.call("admin", "POST", "/sync", {"id": "new", **job(remote="nowhere")})
    assert code == 400 and ans["error"]["message"].startswith("remote:"), ans
