"""The snapshot listing's ETag / If-None-Match (304) and its inotify-backed cache.

Real server on 127.0.0.1 with real TLS, real datastores in tmp_path, real inotify; fakes
only inject faults (no inotify, a non-local file system, a failing watch). The rule under
test: a listing served from the cache is byte-for-byte the listing built afresh from
the folders at that moment (``_snapshots_json`` with a new ManifestCache).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
from serverutil import (
    SYNC_USER,
    TEST_OPTIONS,
    Installation,
    RunningServer,
    SubprocessServer,
    add_datastore,
    add_token,
    add_user,
    grant,
    make_installation,
    running_server,
    write_snapshot,
)

from asyncsync import protocol
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import OWNER_FILE, PROTECTED_MARKER, Datastore
from asyncsync.datastore.manifest import MANIFEST_NAME, Manifest
from asyncsync.names import AuthId, GroupId, Namespace, SnapshotId
from asyncsync.server import datastore_api, listing_cache
from asyncsync.server.app import make_app
from asyncsync.server.datastore_api import LISTING_CACHE, ManifestCache, _snapshots_json
from asyncsync.server.listing_cache import LOCAL_FS_TYPES, ListingCache, is_local_fs, statfs_type
from asyncsync.tls import parse_fingerprint

BACKUP_TOKEN = AuthId.parse("backup1@pbs!tok")  # owns host/web of the standard snapshots
VM100_OLD = SnapshotId.parse("vm/100/2026-11-20T08:00:00Z")
VM100_NEW = SnapshotId.parse("vm/100/2026-11-21T08:00:00Z")
CT200 = SnapshotId.parse("ct/200/2026-11-20T09:00:00Z")


@dataclass
class Setup:
    inst: Installation
    #: Authorization headers: the reader token (sees all), the backup token (sees what it
    #: owns), a token with no privilege at all
    reader: dict[str, str]
    backup: dict[str, str]
    nobody: dict[str, str]


def _auth(token: AuthId, secret: str) -> dict[str, str]:
    return {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{token}:{secret}"}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    inst = make_installation(tmp_path / "remote")
    add_user(inst.paths, "backup1@pbs")
    tok, secret = add_token(inst.paths, "backup1@pbs", "tok")
    for who in (AuthId.parse("backup1@pbs"), tok):  # a token has at most its user's privileges
        grant(inst.paths, "/datastore/store", "DatastoreBackup", who)
    add_user(inst.paths, "nobody@pbs")
    none_tok, none_secret = add_token(inst.paths, "nobody@pbs", "t")
    return Setup(
        inst, _auth(inst.sync_token, inst.sync_secret), _auth(tok, secret), _auth(none_tok, none_secret)
    )


@contextlib.asynccontextmanager
async def server(
    s: Setup, cache: ListingCache | None = None, **options: Any
) -> AsyncIterator[tuple[RunningServer, aiohttp.ClientSession, ListingCache]]:
    """The in-process server of ``s`` (its listing cache replaced by ``cache`` if given), a
    pinned raw session, and the app's listing cache."""
    app = make_app(s.inst.paths, options=dataclasses.replace(TEST_OPTIONS, **options))
    if cache is not None:
        app[LISTING_CACHE] = cache
    async with running_server(s.inst.paths, app=app) as srv:
        assert srv.fingerprint is not None
        conn = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(parse_fingerprint(srv.fingerprint)))
        async with aiohttp.ClientSession(base_url=srv.url, connector=conn) as session:
            yield srv, session, app[LISTING_CACHE]


async def listing(
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    ns: str = "",
    group: str | None = None,
    *,
    store: str = "store",
    if_none_match: str | None = None,
) -> tuple[int, bytes, str | None]:
    """(status, body, ETag) of one snapshot listing."""
    params = {"ns": ns}
    if group is not None:
        params["backup-type"], params["backup-id"] = group.split("/")
    hdrs = dict(headers)
    if if_none_match is not None:
        hdrs["If-None-Match"] = if_none_match
    async with session.get(
        protocol.API_PREFIX + protocol.p_snapshots(store), params=params, headers=hdrs
    ) as resp:
        return resp.status, await resp.read(), resp.headers.get("ETag")


async def fresh(
    store: Datastore, ns: str = "", group: str | None = None, only_for: AuthId | None = None
) -> bytes:
    """The listing built afresh from the folders (no cache of any kind)."""
    g = None if group is None else GroupId.parse(group)
    return await asyncio.to_thread(_snapshots_json, store, Namespace.parse(ns), g, only_for, ManifestCache())


def blake3_tag(body: bytes) -> str:
    return '"' + blake3.blake3(body).hexdigest(length=16) + '"'


# ---- ETag and 304 -------------------------------------------------------------------------


async def test_etag_is_blake3_128_of_the_body_and_a_matching_tag_gets_304(setup: Setup) -> None:
    async with server(setup) as (_, s, _cache):
        status, body, etag = await listing(s, setup.reader)
        assert status == 200
        assert body == await fresh(setup.inst.store)
        assert etag is not None and len(etag) == 34
        assert etag == blake3_tag(body)
        for match in (etag, f'W/"{"0" * 32}", {etag}', f"{etag},{blake3_tag(b'x')}", "*"):
            async with s.get(
                protocol.API_PREFIX + protocol.p_snapshots("store"),
                params={"ns": ""},
                headers={**setup.reader, "If-None-Match": match},
            ) as resp:
                assert resp.status == 304, match
                assert await resp.read() == b""
                assert resp.headers.get("ETag") == etag
        # another scope, another body, another tag
        status, gbody, gtag = await listing(s, setup.reader, group="vm/100")
        assert status == 200 and gbody == await fresh(setup.inst.store, group="vm/100")
        assert gtag == blake3_tag(gbody) != etag


async def test_other_tags_get_the_full_body(setup: Setup) -> None:
    async with server(setup) as (_, s, _cache):
        _, body, etag = await listing(s, setup.reader)
        assert etag is not None
        for other in (
            blake3_tag(b"other"),
            "W/" + etag,
            "garbage",
            etag.strip('"'),
            "",
            '"' + "0" * 32 + '"',
        ):
            status, got, tag = await listing(s, setup.reader, if_none_match=other)
            assert (status, got, tag) == (200, body, etag), other


async def test_403_and_404_do_not_change_with_if_none_match(setup: Setup, tmp_path: Path) -> None:
    inst = setup.inst

    def configure_gone() -> None:  # a configured datastore whose folder is gone: 404
        add_datastore(inst.paths, "gone", tmp_path / "gone")
        shutil.rmtree(tmp_path / "gone")
        for who in (SYNC_USER, inst.sync_token):  # a token has at most its user's privileges
            grant(inst.paths, "/datastore/gone", "DatastoreReader", who)

    await asyncio.to_thread(configure_gone)
    async with server(setup) as (_, s, _cache):
        _, _, etag = await listing(s, setup.reader)
        _, _, gtag = await listing(s, setup.reader, group="vm/100")
        assert etag is not None and gtag is not None
        cases = [
            (setup.nobody, "", None, "store", 403),
            (setup.backup, "", "vm/100", "store", 403),  # owned by admin@pbs
            (setup.reader, "missing", None, "store", 404),
            (setup.reader, "", "vm/999", "store", 404),
            (setup.reader, "", None, "nostore", 403),  # no privilege on an unknown one
            (setup.reader, "", None, "gone", 404),
        ]
        for headers, ns, group, store, expected in cases:
            plain = await listing(s, headers, ns, group, store=store)
            assert plain[0] == expected, (ns, group, store)
            for tag in (etag, gtag, "*"):
                assert await listing(s, headers, ns, group, store=store, if_none_match=tag) == plain


# ---- hits ---------------------------------------------------------------------------------


async def test_a_repeated_listing_is_a_hit_with_identical_bytes(setup: Setup) -> None:
    async with server(setup) as (_, s, cache):
        first = await listing(s, setup.reader)
        assert (cache.hits, cache.misses, cache.stored) == (0, 1, 1)
        second = await listing(s, setup.reader)
        assert second == first and second[0] == 200
        assert (cache.hits, cache.misses, cache.stored) == (1, 1, 1)
        status, body, _ = await listing(s, setup.reader, if_none_match=first[2])
        assert (status, body) == (304, b"") and cache.hits == 2
        # an owner-filtered listing of the same namespace is an entry of its own
        status, mine, _ = await listing(s, setup.backup)
        assert status == 200 and mine == await fresh(setup.inst.store, only_for=BACKUP_TOKEN)
        assert mine != first[1] and cache.misses == 2
        assert await listing(s, setup.backup) == (200, mine, blake3_tag(mine)) and cache.hits == 3
    assert cache.fileno is None and len(cache) == 0


async def test_the_disabled_cache_serves_the_same_bytes_and_tags(setup: Setup) -> None:
    async with server(setup) as (_, s, cache):
        cached = [await listing(s, setup.reader, ns) for ns in ("", "a")]
    async with server(setup, listing_cache=False) as (_, s, cache):
        plain = [await listing(s, setup.reader, ns) for ns in ("", "a")]
        assert await listing(s, setup.reader, if_none_match=plain[0][2]) == (304, b"", plain[0][2])
        assert cache.hits == 0 and cache.fileno is None and len(cache) == 0
    assert plain == cached


# ---- invalidation -------------------------------------------------------------------------


def _ns_dir(store: Datastore, ns: str = "") -> Path:
    return store.ns_path(Namespace.parse(ns))


def _raw_manifest(m: Manifest, notes: str, size: int | None = None) -> bytes:
    """``m`` with ``notes``, as an uncompressed blob, its JSON padded to ``size`` bytes."""
    m.unprotected["notes"] = notes
    text = m.encode()  # the canonical JSON is inside; re-encode it raw for a fixed length
    payload = blob.decode(text)
    if size is not None:
        payload += b" " * (size - len(payload) - 12)
    return blob.encode(payload, compress=False)


def prepare_raw_manifest(inst: Installation) -> None:
    """VM100_OLD's manifest as a raw blob of a known length (atomically, before the test)."""
    path = inst.store.snapshot_path(Namespace.parse(""), VM100_OLD) / MANIFEST_NAME
    m = Manifest.decode(path.read_bytes())
    raw = _raw_manifest(m, "comment A", 4096)
    tmp = path.with_name(".tmp")
    tmp.write_bytes(raw)
    tmp.rename(path)


def rewrite_manifest_in_place(inst: Installation) -> None:
    path = inst.store.snapshot_path(Namespace.parse(""), VM100_OLD) / MANIFEST_NAME
    old = path.read_bytes()
    new = _raw_manifest(Manifest.decode(old), "comment B", 4096)
    assert len(new) == len(old) and new != old
    with open(path, "r+b") as f:
        f.write(new)


def _protected(inst: Installation) -> Path:
    return inst.store.snapshot_path(Namespace.parse(""), CT200) / PROTECTED_MARKER


def rewrite_owner_in_place(inst: Installation) -> None:
    path = inst.store.group_path(Namespace.parse(""), VM100_OLD.group) / OWNER_FILE
    with open(path, "r+b") as f:
        f.write(f"{BACKUP_TOKEN}\n".encode())
        f.truncate()


def new_group_by_hand(inst: Installation) -> None:
    (_ns_dir(inst.store) / "vm" / "555").mkdir()
    write_snapshot(inst.store, "", "vm/555/2026-11-24T08:00:00Z", owner="admin@pbs")


def new_type_folder(inst: Installation) -> None:
    (_ns_dir(inst.store, "a") / "ct").mkdir()
    write_snapshot(inst.store, "a", "ct/9/2026-11-24T08:00:00Z", owner="admin@pbs")


@dataclass(frozen=True)
class Change:
    id: str
    do: Callable[[Installation], None]
    ns: str = ""
    group: str | None = None
    #: list as the backup token (an owner-filtered listing)
    owned: bool = False
    prepare: Callable[[Installation], None] | None = None


CHANGES = [
    Change(
        "commit-api",
        lambda i: write_snapshot(i.store, "", "vm/100/2026-11-24T08:00:00Z", owner="admin@pbs"),
    ),
    Change(
        "commit-api-group-listing",
        lambda i: write_snapshot(i.store, "", "vm/100/2026-11-24T08:00:00Z", owner="admin@pbs"),
        group="vm/100",
    ),
    Change("rmtree-snapshot", lambda i: shutil.rmtree(i.store.snapshot_path(Namespace.parse(""), VM100_NEW))),
    Change("manifest-in-place", rewrite_manifest_in_place, prepare=prepare_raw_manifest),
    Change("protect-by-hand", lambda i: _protected(i).touch()),
    Change("unprotect-by-hand", lambda i: _protected(i).unlink(), prepare=lambda i: _protected(i).touch()),
    Change("owner-in-place", rewrite_owner_in_place, owned=True),
    Change("new-group-by-hand", new_group_by_hand),
    Change(
        "group-renamed",
        lambda i: os.rename(_ns_dir(i.store) / "vm" / "100", _ns_dir(i.store) / "vm" / "101"),
    ),
    Change("new-type-folder", new_type_folder, ns="a"),
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.id for c in CHANGES])
async def test_a_change_is_seen_by_the_next_listing(setup: Setup, change: Change) -> None:
    inst = setup.inst
    headers = setup.backup if change.owned else setup.reader
    only_for = BACKUP_TOKEN if change.owned else None
    if change.prepare is not None:
        await asyncio.to_thread(change.prepare, inst)
    async with server(setup) as (_, s, cache):
        status, before, tag = await listing(s, headers, change.ns, change.group)
        assert status == 200 and before == await fresh(inst.store, change.ns, change.group, only_for)
        assert await listing(s, headers, change.ns, change.group) == (200, before, tag)
        assert cache.hits == 1
        await asyncio.to_thread(change.do, inst)
        status, after, new_tag = await listing(s, headers, change.ns, change.group, if_none_match=tag)
        assert status == 200, "a stale tag matched"
        assert after == await fresh(inst.store, change.ns, change.group, only_for)
        assert after != before and new_tag == blake3_tag(after)
        assert cache.hits == 1 and cache.misses == 2
        # and the new listing is cached in turn
        assert await listing(s, headers, change.ns, change.group) == (200, after, new_tag)
        assert cache.hits == 2
    if change.id == "manifest-in-place":
        assert b'"comment":"comment A"' in before and b'"comment":"comment B"' in after


async def test_a_renamed_ancestor_of_the_namespace_folder_is_seen(setup: Setup) -> None:
    """No watch sees a parent of the namespace folder renamed: the folder's identity does."""
    inst = setup.inst
    async with server(setup) as (_, s, cache):
        status, before, _ = await listing(s, setup.reader, "a/b")
        assert status == 200 and await listing(s, setup.reader, "a/b") == (200, before, blake3_tag(before))
        assert cache.hits == 1

        def replace_namespace() -> None:
            old = _ns_dir(inst.store, "a")
            old.rename(old.with_name("a-old"))
            write_snapshot(inst.store, "a/b", "host/other/2026-11-24T08:00:00Z", owner="admin@pbs")

        await asyncio.to_thread(replace_namespace)
        status, after, _ = await listing(s, setup.reader, "a/b")
        assert status == 200 and after == await fresh(inst.store, "a/b") != before
        assert cache.hits == 1
        await asyncio.to_thread(shutil.rmtree, _ns_dir(inst.store, "a"))
        assert (await listing(s, setup.reader, "a/b"))[0] == 404


async def test_a_change_just_before_a_request_is_drained_first(setup: Setup) -> None:
    """The loop reader may not have run yet: the request drains the queue itself."""
    store = setup.inst.store
    ns = Namespace.parse("")
    cache = ListingCache()

    def locate() -> tuple[str, str, Datastore]:
        return os.path.realpath(store.root), str(store.ns_path(ns)), store

    def build(ds: Datastore, watch: Callable[[str], None] | None) -> bytes:
        return _snapshots_json(ds, ns, None, None, ManifestCache(), watch)

    try:
        first = await cache.get(("", None, None), locate, build)
        assert not first.cached and (await cache.get(("", None, None), locate, build)).cached
        for step in range(4):
            # on the loop thread, and no await before the request: nothing else can drain
            marker = _protected(setup.inst)
            if step % 2 == 0:
                os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600))
            else:
                os.unlink(marker)
            got = await cache.get(("", None, None), locate, build)
            assert not got.cached and got.body == await fresh(store)
            assert (await cache.get(("", None, None), locate, build)).cached
    finally:
        cache.close()


async def test_a_change_during_the_build_is_not_cached(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = setup.inst
    before = await fresh(inst.store)
    real = datastore_api._owner_at
    changed: list[str] = []

    def owner_at(gdir: str) -> AuthId | None:
        # groups are read ct/200, host/web, vm/100: when vm/100 comes, ct/200 is done
        if gdir.endswith("/vm/100") and not changed:
            _protected(inst).touch()
            changed.append(gdir)
        return real(gdir)

    monkeypatch.setattr(datastore_api, "_owner_at", owner_at)
    async with server(setup) as (_, s, cache):
        status, first, _ = await listing(s, setup.reader)
        assert status == 200 and changed
        assert first == before, "the change was meant to come after its folder was read"
        assert cache.discarded == 1 and cache.stored == 0 and len(cache) == 0
        status, second, _ = await listing(s, setup.reader)
        assert second == await fresh(inst.store) != first
        assert b'"protected":true' in second
        assert (cache.hits, cache.misses, cache.stored) == (0, 2, 1)


# ---- fallbacks: never wrong, only uncached --------------------------------------------------


class _FailingWatches:
    """An inotify instance whose watches fail with ENOSPC after the first ``good``."""

    def __init__(self, good: int, real: Callable[[], Any]) -> None:
        self._real = real()
        self._left = good

    def fileno(self) -> int:
        return self._real.fileno()

    def add_watch(self, path: str, mask: int) -> int:
        if self._left <= 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        self._left -= 1
        return self._real.add_watch(path, mask)

    def close(self) -> None:
        self._real.close()


FALLBACKS = ["budget-of-one", "not-local", "no-inotify-module", "no-inotify-instance", "watch-fails"]


@pytest.mark.parametrize("fallback", FALLBACKS)
async def test_fallbacks_serve_correct_listings_uncached(
    setup: Setup, fallback: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ListingCache(max_watches=1) if fallback == "budget-of-one" else ListingCache()
    if fallback == "not-local":
        monkeypatch.setattr(listing_cache, "statfs_type", lambda path: 0x6969)  # NFS
    elif fallback == "no-inotify-module":

        def no_module() -> Any:
            raise ImportError("No module named 'inotify_simple'")

        monkeypatch.setattr(listing_cache, "open_inotify", no_module)
    elif fallback == "no-inotify-instance":

        def no_instance() -> Any:
            raise OSError(errno.EMFILE, "too many open files")

        monkeypatch.setattr(listing_cache, "open_inotify", no_instance)
    elif fallback == "watch-fails":
        real = listing_cache.open_inotify
        monkeypatch.setattr(listing_cache, "open_inotify", lambda: _FailingWatches(5, real))
    inst = setup.inst
    async with server(setup, cache) as (_, s, cache):
        for _ in range(2):
            for ns, group in (("", None), ("", "vm/100"), ("a", None)):
                status, body, tag = await listing(s, setup.reader, ns, group)
                assert status == 200 and body == await fresh(inst.store, ns, group)
                assert tag == blake3_tag(body)
        await asyncio.to_thread(
            write_snapshot, inst.store, "", "vm/100/2026-11-24T08:00:00Z", owner="admin@pbs"
        )
        status, body, _ = await listing(s, setup.reader)
        assert status == 200 and body == await fresh(inst.store)
        assert cache.hits == 0 and cache.stored == 0 and len(cache) == 0
        assert cache.uncached == 7
        assert cache.watches <= (1 if fallback == "budget-of-one" else 5)
        if fallback.startswith("no-inotify"):
            assert cache.fileno is None


def test_statfs_type_reads_the_real_file_system_type(tmp_path: Path) -> None:
    assert statfs_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC: not in the allowlist
    assert not is_local_fs("/proc")
    kind = statfs_type(str(tmp_path))
    assert kind == statfs_type(str(tmp_path / ".."))  # same file system, same answer
    if kind in (0xEF53, 0x01021994):  # the usual test hosts: ext4 or tmpfs
        assert is_local_fs(str(tmp_path)) and kind in LOCAL_FS_TYPES
    with pytest.raises(FileNotFoundError):
        statfs_type(str(tmp_path / "missing"))


async def test_a_queue_overflow_invalidates_every_root(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real IN_Q_OVERFLOW: more events than the kernel queues, while the loop cannot drain
    (where the kernel queues more than 100,000 events, the overflow event is injected)."""
    limit = int(await asyncio.to_thread(Path("/proc/sys/fs/inotify/max_queued_events").read_text))
    real = limit <= 100_000
    inst = setup.inst
    other = await asyncio.to_thread(add_datastore, inst.paths, "store2", inst.paths.state.parent / "store2")
    await asyncio.to_thread(write_snapshot, other, "", "vm/1/2026-11-20T08:00:00Z", owner="admin@pbs")
    for who in (SYNC_USER, inst.sync_token):
        await asyncio.to_thread(grant, inst.paths, "/datastore/store2", "DatastoreReader", who)
    root = _ns_dir(inst.store)  # watched: the root namespace's folder
    async with server(setup) as (_, s, cache):
        for store in ("store", "store2", "store", "store2"):
            assert (await listing(s, setup.reader, store=store))[0] == 200
        assert (cache.hits, cache.misses) == (2, 2)
        if real:
            # on the loop thread, so nothing drains meanwhile: each file is IN_CREATE + IN_CLOSE_WRITE
            for i in range(limit):
                os.close(os.open(root / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        else:
            injected = [listing_cache._EVENT.pack(-1, listing_cache.IN_Q_OVERFLOW, 0, 0)]
            real_read = listing_cache.read_events

            def overflow_once(fd: int) -> bytes:
                return injected.pop() if injected else real_read(fd)

            monkeypatch.setattr(listing_cache, "read_events", overflow_once)
        for store in ("store2", "store"):
            status, body, _ = await listing(s, setup.reader, store=store)
            assert status == 200
            assert body == await fresh(other if store == "store2" else inst.store)
        assert (cache.hits, cache.misses) == (2, 4), "store2 had no event of its own: only the overflow"

        def clean() -> None:
            for i in range(limit if real else 0):
                (root / f"f{i}").unlink()

        await asyncio.to_thread(clean)


# ---- the option and the shutdown ------------------------------------------------------------


def _inotify_fds(pid: int | str) -> list[int]:
    out = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        with contextlib.suppress(OSError):
            if os.readlink(f"{base}/{name}") == "anon_inode:inotify":
                out.append(int(name))
    return out


@pytest.mark.parametrize("flag", [True, False], ids=["no-listing-cache", "default"])
async def test_no_listing_cache_option_of_serve(setup: Setup, flag: bool) -> None:
    args = ["--no-scheduler", "--no-access-log"] + (["--no-listing-cache"] if flag else [])
    srv = await asyncio.to_thread(SubprocessServer, setup.inst.env(), *args)
    try:
        assert srv.fingerprint is not None
        conn = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(parse_fingerprint(srv.fingerprint)))
        async with aiohttp.ClientSession(base_url=f"https://{srv.host}:{srv.port}", connector=conn) as s:
            first = await listing(s, setup.reader)
            assert first == await listing(s, setup.reader)
            assert first[0] == 200 and first[1] == await fresh(setup.inst.store)
            assert first[2] == blake3_tag(first[1])
            assert (await listing(s, setup.reader, if_none_match=first[2]))[0] == 304
        fds = await asyncio.to_thread(_inotify_fds, srv.proc.pid)
        assert len(fds) == (0 if flag else 1)
    finally:
        assert await asyncio.to_thread(srv.stop) == 0
    assert "Traceback" not in srv.stderr


async def test_shutdown_closes_the_inotify_descriptor_and_reader(setup: Setup) -> None:
    before = await asyncio.to_thread(_inotify_fds, "self")
    async with server(setup) as (_, s, cache):
        assert (await listing(s, setup.reader))[0] == 200
        fd = cache.fileno
        assert fd is not None
        during = await asyncio.to_thread(_inotify_fds, "self")
        assert sorted(during) == sorted([*before, fd])
        assert cache.watches > 0
    assert await asyncio.to_thread(_inotify_fds, "self") == before
    assert cache.fileno is None and cache.watches == 0
    assert not asyncio.get_running_loop().remove_reader(fd)
