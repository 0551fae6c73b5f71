"""The pull's prescan: the local groups' state is read while the remote listing is on its way.

Contract (asyncsync.sync.pull._PullRun._prescan / _settle_unchanged): each group is
read under its lock, released within the thread hop; once the namespace-wide listing
is here, a prescanned group is decided in memory with the pre-check's rules. A group
the prescan could not read (locked, beyond the budget) is read by the pre-check as
before; a group that needs work takes the full path, which re-reads it under its own
lock. A cancelled or failing plan waits for the prescan's thread and leaves no lock
held. Decisions and reports are those of the full per-group path.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pullutil import T0, add_snapshot, new_store, store_tree
from serverutil import Installation, RunningServer, http_pull, remote, remote_server  # noqa: F401

from asyncsync import LocalSource, PullOptions, PullReport, pull
from asyncsync.datastore.datastore import Datastore, FileLock
from asyncsync.datastore.manifest import MANIFEST_NAME, FileEntry
from asyncsync.names import ROOT_NS, AuthId, GroupId, Namespace, SnapshotId
from asyncsync.protocol import SnapshotItem
from asyncsync.sync import pull as pull_mod
from asyncsync.sync.groupfilter import GroupFilters
from asyncsync.sync.plan import unchanged_count
from asyncsync.sync.report import GroupStatus

GROUPS = [GroupId.parse(f"vm/{100 + i}") for i in range(5)]
NS = Namespace.parse("a")


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Datastore, Datastore]:
    """A source of 5 groups x 2 snapshots in namespace ``a``, and an empty target."""
    src = new_store(tmp_path / "src", "src")
    rng = random.Random(5)
    for g in GROUPS:
        for k in range(2):
            add_snapshot(src, NS, g, T0 + 3600 * k, rng=rng, chunks=1, chunk_size=256)
    return src, new_store(tmp_path / "dst", "dst")


class GatedSource(LocalSource):
    """A local source whose namespace-wide snapshot listing waits for ``gate`` (the test
    decides when "the listing arrives"), then raises ``fail`` if set."""

    def __init__(self, store: Datastore) -> None:
        super().__init__(store)
        self.gate = asyncio.Event()
        self.fail: BaseException | None = None
        self.bulk_calls = 0

    async def list_namespace_snapshots(self, ns: Namespace) -> list[SnapshotItem]:
        self.bulk_calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().list_namespace_snapshots(ns)


class Reads:
    """Counts the groups read under their lock, by whom (prescan or pre-check), and the
    groups that took the full path."""

    def clear(self) -> None:
        """Forget what was counted so far (the first pull's reads)."""
        self.prescan.clear()
        self.settle.clear()
        self.full.clear()

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.prescan: list[str] = []
        self.settle: list[str] = []
        self.full: list[GroupId] = []
        self.in_prescan = threading.local()
        real_read = pull_mod._read_group
        real_prescan = pull_mod._prescan_groups
        real_begin = pull_mod._begin_group

        def read(gdir: str, owner: AuthId, older: bool, keys: Any = None) -> Any:
            name = "/".join(gdir.split("/")[-2:])
            (self.prescan if getattr(self.in_prescan, "on", False) else self.settle).append(name)
            return real_read(gdir, owner, older, keys)

        def prescan(*args: Any) -> Any:
            self.in_prescan.on = True
            try:
                return real_prescan(*args)
            finally:
                self.in_prescan.on = False

        def begin(store: Datastore, ns: Namespace, group: GroupId, owner: AuthId) -> Any:
            self.full.append(group)
            return real_begin(store, ns, group, owner)

        mp.setattr(pull_mod, "_read_group", read)
        mp.setattr(pull_mod, "_prescan_groups", prescan)
        mp.setattr(pull_mod, "_begin_group", begin)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    return Reads(monkeypatch)


def opts(**kw: Any) -> PullOptions:
    return PullOptions(remote_ns=NS, ns=NS, **kw)


async def first_pull(src: Datastore, dst: Datastore) -> None:
    report = await pull(LocalSource(src), dst, opts())
    assert report.ok and report.snapshots_synced == 2 * len(GROUPS)


def held_locks(store: Datastore) -> list[GroupId]:
    """The groups whose lock someone holds (tried non-blocking; released at once)."""
    held = []
    for g in store.list_groups(NS):
        try:
            store.group_lock(NS, g).acquire().release()
        except Exception:
            held.append(g)
    return held


def prescan_done(mp: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when the run's prescan has returned."""
    done = asyncio.Event()
    real = pull_mod._PullRun._prescan

    async def wrapped(self: Any, *args: Any) -> None:
        try:
            await real(self, *args)
        finally:
            done.set()

    mp.setattr(pull_mod._PullRun, "_prescan", wrapped)
    return done


async def pull_after_prescan(
    source: GatedSource, dst: Datastore, done: asyncio.Event, **kw: Any
) -> PullReport:
    """A pull whose listing arrives only once the prescan has returned (the overlap made certain)."""
    task = asyncio.create_task(pull(source, dst, opts(**kw)))
    await done.wait()
    source.gate.set()
    return await task


async def test_noop_reads_each_group_once_while_the_listing_is_on_its_way(
    stores: tuple[Datastore, Datastore], reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    await first_pull(src, dst)
    reads.clear()
    source = GatedSource(src)
    report = await pull_after_prescan(source, dst, prescan_done(monkeypatch))
    assert report.ok and report.snapshots_synced == 0 and report.chunks_downloaded == 0
    assert [(g.group, g.status, g.snapshots_unchanged) for g in report.groups] == [
        (g, GroupStatus.OK, 1) for g in GROUPS
    ]
    assert report.summary() == "no new data to pull"
    assert source.bulk_calls == 1
    # every group was read once, by the prescan, before the listing arrived; none again
    assert sorted(reads.prescan) == sorted(str(g) for g in GROUPS)
    assert reads.settle == [] and reads.full == []
    assert await asyncio.to_thread(held_locks, dst) == []


async def test_changed_and_locked_groups_take_the_paths_they_took_before(
    stores: tuple[Datastore, Datastore], reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    await first_pull(src, dst)
    await asyncio.to_thread(add_snapshot, src, NS, GROUPS[1], T0 + 7200, chunks=1, chunk_size=256)
    reads.clear()
    source = GatedSource(src)
    done = prescan_done(monkeypatch)
    # GROUPS[3] is locked by "another backup" while the prescan runs, free when the listing comes
    lock = await asyncio.to_thread(lambda: dst.group_lock(NS, GROUPS[3]).acquire())
    task = asyncio.create_task(pull(source, dst, opts()))
    try:
        await done.wait()
    finally:
        await asyncio.to_thread(lock.release)
    source.gate.set()
    report = await task
    assert report.ok
    by_group = {g.group: (g.status, g.snapshots_synced, g.snapshots_unchanged) for g in report.groups}
    assert by_group[GROUPS[1]] == (GroupStatus.OK, 1, 1)  # the new snapshot + the newest re-checked
    assert all(by_group[g] == (GroupStatus.OK, 0, 1) for g in GROUPS if g != GROUPS[1])
    assert [g.group for g in report.groups] == GROUPS  # the run's order
    # the prescan read all (the locked one failed to); the pre-check read only the locked one;
    # only the changed group took the full path, which read it again under its own lock
    assert sorted(reads.prescan) == sorted(str(g) for g in GROUPS)
    assert reads.settle == [str(GROUPS[3])]
    assert reads.full == [GROUPS[1]]
    assert await asyncio.to_thread(held_locks, dst) == []


@pytest.mark.parametrize("remove_vanished", [False, True])
async def test_prescan_decides_like_the_full_path(
    stores: tuple[Datastore, Datastore],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    remove_vanished: bool,
) -> None:
    src, dst = stores
    await first_pull(src, dst)

    def change() -> None:
        # a local snapshot the remote no longer has, a newest one removed here, remote notes
        src.remove_snapshot(NS, SnapshotId(GROUPS[0], T0))
        (dst.snapshot_path(NS, SnapshotId(GROUPS[2], T0 + 3600)) / MANIFEST_NAME).unlink()
        src.update_unprotected(NS, SnapshotId(GROUPS[4], T0 + 3600), notes="edited")

    await asyncio.to_thread(change)
    copy_root = tmp_path / "copy"
    await asyncio.to_thread(shutil.copytree, dst.root, copy_root, symlinks=True)
    copy = await asyncio.to_thread(Datastore.open, copy_root, "dst")
    with monkeypatch.context() as mp:
        mp.setattr(pull_mod, "_settle_unchanged", lambda *a: [])  # no pre-check, no prescan decisions
        full = await pull(LocalSource(src), copy, opts(remove_vanished=remove_vanished))
    fast = await pull_after_prescan(
        GatedSource(src), dst, prescan_done(monkeypatch), remove_vanished=remove_vanished
    )

    def outcome(r: PullReport) -> list[tuple[str, str, int, int, int]]:
        return [
            (str(g.group), g.status.value, g.snapshots_synced, g.snapshots_unchanged, g.removed_snapshots)
            for g in r.groups
        ]

    assert outcome(fast) == outcome(full)
    assert fast.removed_snapshots == (1 if remove_vanished else 0)
    assert await asyncio.to_thread(store_tree, dst) == await asyncio.to_thread(store_tree, copy)


async def test_budget_and_filter_bound_the_prescan(
    stores: tuple[Datastore, Datastore], reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    await first_pull(src, dst)
    reads.clear()
    monkeypatch.setattr(pull_mod, "PRESCAN_MAX_SNAPSHOTS", 2)  # a group counts one (newest only)
    report = await pull_after_prescan(GatedSource(src), dst, prescan_done(monkeypatch))
    assert report.ok and report.snapshots_unchanged == len(GROUPS)
    assert len(reads.prescan) == 2
    # the groups beyond the budget are read by the pre-check, as without a prescan
    assert sorted(reads.prescan + reads.settle) == sorted(str(g) for g in GROUPS)
    assert reads.full == []

    reads.prescan.clear()
    reads.settle.clear()
    wanted = GroupFilters.parse(["group:vm/101", "group:vm/103"])
    report = await pull_after_prescan(GatedSource(src), dst, prescan_done(monkeypatch), group_filter=wanted)
    assert report.ok and [g.group for g in report.groups] == [GROUPS[1], GROUPS[3]]
    assert sorted(reads.prescan) == ["vm/101", "vm/103"]  # only selected groups are read


def gate_prescan(
    monkeypatch: pytest.MonkeyPatch, *, hold_lock: bool
) -> tuple[threading.Event, threading.Event, list[bool]]:
    """Make the prescan's first hop block until ``go`` is set (``started`` says it is blocked),
    holding its first group's lock meanwhile if asked; ``finished`` gets True when the real
    hop has run after it."""
    started, go = threading.Event(), threading.Event()
    finished: list[bool] = []
    real = pull_mod._prescan_groups

    def slow(*args: Any) -> Any:
        store, ns, groups = args[0], args[1], args[2]
        lock = store.group_lock(ns, groups[0]).acquire() if hold_lock else None
        started.set()
        try:
            go.wait(30)
        finally:
            if lock is not None:
                lock.release()
        result = real(*args)
        finished.append(True)
        return result

    monkeypatch.setattr(pull_mod, "_prescan_groups", slow)
    return started, go, finished


async def test_cancel_during_the_prescan_waits_for_its_thread_and_leaves_no_lock(
    stores: tuple[Datastore, Datastore], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    await first_pull(src, dst)
    # the blocked hop holds the first group's lock: the cancelled pull must wait for it
    started, go, finished = gate_prescan(monkeypatch, hold_lock=True)
    source = GatedSource(src)
    task = asyncio.create_task(pull(source, dst, opts()))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    for _ in range(20):
        await asyncio.sleep(0)  # let the cancellation reach every task (no timing involved)
    assert not task.done()  # it waits for the prescan's thread
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]
    assert await asyncio.to_thread(held_locks, dst) == []


async def test_a_failing_plan_waits_for_the_prescan_and_raises_its_own_error(
    stores: tuple[Datastore, Datastore], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    await first_pull(src, dst)
    started, go, finished = gate_prescan(monkeypatch, hold_lock=False)
    source = GatedSource(src)
    source.fail = RuntimeError("listing broke")
    task = asyncio.create_task(pull(source, dst, opts()))
    await asyncio.to_thread(started.wait, 30)
    source.gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    go.set()
    with pytest.raises(RuntimeError, match="listing broke"):  # the error itself, not a group
        await task
    assert finished == [True]
    assert await asyncio.to_thread(held_locks, dst) == []


# ---- newest-only local state (no remove-vanished) ---------------------------------------------


def _item(t: int, digest: str | None, finished: bool, verified: bool) -> SnapshotItem:
    files = (FileEntry("x.blob", 1, "c"),) if finished else ()
    return SnapshotItem(
        SnapshotId(GROUPS[0], t), files, 1, False, "ok" if verified else None, None, None, digest
    )


_times = st.integers(min_value=0, max_value=8)
_digest = st.sampled_from([None, "d1", "d2"])


@given(
    remote=st.lists(st.tuples(_times, _digest, st.booleans(), st.booleans()), max_size=6),
    local=st.dictionaries(_times, _digest, max_size=6),
    transfer_last=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
    verified_only=st.booleans(),
)
def test_newest_local_snapshot_alone_decides_without_remove_vanished(
    remote: list[tuple[int, str | None, bool, bool]],
    local: dict[int, str | None],
    transfer_last: int | None,
    verified_only: bool,
) -> None:
    """What _local_state(older=False) relies on: without remove-vanished, the older local
    snapshots change nothing in the decision."""
    items = [_item(*r) for r in {r[0]: r for r in remote}.values()]
    full = {t: (d if t == max(local) else None) for t, d in local.items()} if local else {}
    newest = {max(full): full[max(full)]} if full else {}
    kw: dict[str, Any] = {"transfer_last": transfer_last, "verified_only": verified_only}
    assert unchanged_count(items, newest, **kw) == unchanged_count(items, full, **kw)


def test_local_state_newest_only_is_the_newest_committed(tmp_path: Path) -> None:
    ds = new_store(tmp_path / "dst", "dst")
    g = GROUPS[0]
    for k in range(3):
        add_snapshot(ds, NS, g, T0 + 3600 * k, chunks=1, chunk_size=256)
    gdir = str(ds.group_path(NS, g))
    full = pull_mod._local_state(gdir)
    assert list(full) == [T0, T0 + 3600, T0 + 7200]
    assert pull_mod._local_state(gdir, older=False) == {T0 + 7200: full[T0 + 7200]}
    (ds.snapshot_path(NS, SnapshotId(g, T0 + 7200)) / MANIFEST_NAME).unlink()  # newest uncommitted
    newest = pull_mod._local_state(gdir, older=False)
    assert list(newest) == [T0 + 3600] and newest[T0 + 3600] == pull_mod._local_state(gdir)[T0 + 3600]
    assert pull_mod._local_state(str(ds.group_path(NS, GROUPS[1])), older=False) == {}


def test_read_group_releases_its_lock_and_refuses_others(tmp_path: Path) -> None:
    ds = new_store(tmp_path / "dst", "dst")
    add_snapshot(ds, NS, GROUPS[0], T0, chunks=1, chunk_size=256)
    gdir = str(ds.group_path(NS, GROUPS[0]))
    root = AuthId.parse("root@pam")
    assert list(pull_mod._read_group(gdir, root, False) or {}) == [T0]
    ds.group_lock(NS, GROUPS[0]).acquire().release()  # free again
    assert pull_mod._read_group(gdir, AuthId.parse("alice@pbs"), False) is None  # another owner
    held = FileLock(f"{gdir}/.lock", "test").acquire()
    try:
        assert pull_mod._read_group(gdir, root, False) is None  # locked: left to the full path
    finally:
        held.release()
    assert pull_mod._read_group(str(ds.group_path(NS, GROUPS[1])), root, False) is None  # missing
    assert not ds.group_path(NS, GROUPS[1]).exists()  # and nothing was created


# ---- over the wire --------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many groups each prescan hop read successfully."""
    out: list[int] = []
    real = pull_mod._prescan_groups

    def counting(*args: Any) -> Any:
        result = real(*args)
        out.append(len(result[0]))
        return result

    monkeypatch.setattr(pull_mod, "_prescan_groups", counting)
    yield out


async def test_noop_over_tls_is_decided_by_the_prescan(
    remote: Installation, remote_server: RunningServer, tmp_path: Path, counted: list[int]
) -> None:
    dst = await asyncio.to_thread(new_store, tmp_path / "dst", "dst")
    first = await http_pull(remote_server, remote, dst, remote_ns=ROOT_NS)
    assert first.ok and first.snapshots_synced > 0
    owned = [g for g in first.groups if g.status is GroupStatus.OK]
    counted.clear()
    again = await http_pull(remote_server, remote, dst, remote_ns=ROOT_NS)
    assert again.ok and again.snapshots_synced == 0 and again.chunks_downloaded == 0
    assert [(g.group, g.status) for g in again.groups] == [(g.group, g.status) for g in first.groups]
    assert sum(counted) == len(owned) > 0  # each of our groups was read by the prescan


# ---- listing parse ----------------------------------------------------------------------------


def reference_from_json(obj: Any) -> SnapshotItem:
    """SnapshotItem.from_json as it was before its fast path (same cached validators)."""
    from asyncsync.errors import InvalidInput, InvalidName
    from asyncsync.protocol import _archive_name, _auth_of, _group_of, _optional_digest

    try:
        files = tuple(
            [
                FileEntry(_archive_name(f["filename"]), int(f["size"]), str(f["csum"]))
                for f in obj.get("files") or ()
            ]
        )
        verification = obj.get("verification")
        owner = obj.get("owner")
        return SnapshotItem(
            SnapshotId(_group_of(obj["backup-type"], obj["backup-id"]), int(obj["backup-time"])),
            files,
            int(obj.get("size") or 0),
            bool(obj.get("protected", False)),
            verification.get("state") if isinstance(verification, dict) else None,
            _auth_of(owner) if owner else None,
            obj.get("comment"),
            _optional_digest(obj.get("manifest-digest")),
        )
    except (KeyError, TypeError, ValueError, AttributeError, InvalidName) as exc:
        raise InvalidInput(f"malformed snapshot in answer: {exc}") from exc


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=False), st.text(max_size=8)
)
_valid_file = st.fixed_dictionaries(
    {"filename": st.sampled_from(["root.didx", "a.fidx", "b.blob"]), "size": st.integers(0, 99),
     "csum": st.sampled_from(["ab" * 32, "c"])}
)  # fmt: skip
_valid_snapshot = st.fixed_dictionaries(
    {
        "backup-type": st.sampled_from(["vm", "ct", "host"]),
        "backup-id": st.sampled_from(["100", "a.b", "x_1"]),
        "backup-time": st.integers(0, 2**34),
    },
    optional={
        "files": st.lists(_valid_file, max_size=3),
        "size": st.integers(0, 2**40),
        "protected": st.booleans(),
        "verification": st.one_of(
            st.none(), st.fixed_dictionaries({"state": st.sampled_from(["ok", "failed"])})
        ),
        "owner": st.sampled_from(["root@pam", "u@pbs!tok", None]),
        "comment": st.one_of(st.none(), st.text(max_size=8)),
        "manifest-digest": st.sampled_from(["ab" * 32, "AB" * 32, "zz" * 32, "ab" * 31, None]),
    },
)
#: values that break a field (or do not: ``"17"`` is a valid time, ``"12"`` a valid size)
_junk = {
    "backup-type": st.one_of(
        st.sampled_from(["VM", "", "vm/"]), _json_leaf, st.lists(_json_leaf, max_size=1)
    ),
    "backup-id": st.one_of(st.sampled_from(["..", "", "x/y", "-a"]), _json_leaf),
    "backup-time": st.one_of(st.sampled_from([-1, 2**40, "17", "t"]), _json_leaf),
    "files": st.one_of(
        _json_leaf,
        st.lists(_json_leaf, min_size=1, max_size=2),
        st.lists(
            st.fixed_dictionaries(
                {"filename": st.one_of(st.sampled_from(["index.json.blob", "../x", "a.txt"]), _json_leaf),
                 "size": st.one_of(st.just("12"), st.just("x"), _json_leaf), "csum": _json_leaf}
            ),
            min_size=1,
            max_size=2,
        ),
    ),
    "size": _json_leaf,
    "protected": _json_leaf,
    "verification": st.one_of(_json_leaf, st.fixed_dictionaries({"state": _json_leaf})),
    "owner": st.one_of(st.sampled_from(["bad", "a@b!t!x", "@pam"]), _json_leaf),
    "comment": _json_leaf,
    "manifest-digest": _json_leaf,
}  # fmt: skip
_snapshot_json = st.one_of(
    _valid_snapshot,
    st.tuples(_valid_snapshot, st.sampled_from(sorted(_junk))).flatmap(
        lambda dk: _junk[dk[1]].map(lambda v: {**dk[0], dk[1]: v})
    ),
    st.tuples(_valid_snapshot, st.sampled_from(sorted(_junk))).map(
        lambda dk: {k: v for k, v in dk[0].items() if k != dk[1]}
    ),
)


@given(obj=st.one_of(_snapshot_json, _json_leaf, st.lists(_json_leaf, max_size=2)))
def test_snapshot_from_json_matches_the_reference_on_any_input(obj: Any) -> None:
    from asyncsync.errors import InvalidInput

    try:
        expected: SnapshotItem | str = reference_from_json(obj)
    except InvalidInput as exc:
        expected = str(exc)
    try:
        got: SnapshotItem | str = SnapshotItem.from_json(obj)
    except InvalidInput as exc:
        got = str(exc)
    assert got == expected
