"""``asyncsync demo``: a real pull from a loopback server, end to end, in a temp folder.

Two installations live side by side in the work folder: ``source/`` (a
datastore with namespaces and groups, served over TLS on 127.0.0.1) and
``target/`` (a local datastore, a remote pointing at the source with its pinned
fingerprint, and a sync job). The demo runs the job, changes some source data,
runs it again (only the changed chunks cross the wire), and restores archives
from the target to prove they equal the original bytes.

Everything goes through the same library calls the CLI and the server use.
"""

from __future__ import annotations

import asyncio
import filecmp
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import access
from .backup.reader import restore
from .backup.writer import ArchiveSource, backup
from .config import datastores, remotes, syncjobs
from .config.paths import Paths
from .datastore.chunkstore import SyncLevel
from .datastore.datastore import Datastore
from .errors import IntegrityError
from .jobs.runner import SyncJobRunner
from .jobs.tasks import TaskManager, TaskStateKind
from .names import AuthId, GroupId, Namespace, SnapshotId
from .server.app import serve
from .sync.report import PullReport
from .units import format_size

Say = Callable[[str], None]

IMAGE_SIZE = 32 * 1024 * 1024
SOURCE_LAYOUT: tuple[tuple[str, str], ...] = (
    ("", "host/web"),
    ("location_a", "vm/100"),
    ("location_a/department_x", "vm/101"),
    ("location_a/department_x/team_one", "ct/200"),
    ("location_a/department_x/team_two", "ct/201"),
    ("location_a/department_y", "vm/102"),
    ("location_b", "host/db"),
)
REMOTE_NS = "location_a/department_x"
LOCAL_NS = "location_a_dep_x"


@dataclass
class DemoResult:
    """What the demo did; ``ok`` is True when every check passed."""

    workdir: Path
    reports: list[PullReport] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    ok: bool = False


def _make_tree(root: Path, rng: random.Random, files: int) -> None:
    """A small folder tree: text files, random data, an empty file, a symlink, nesting."""
    (root / "etc" / "app").mkdir(parents=True)
    (root / "var" / "lib").mkdir(parents=True)
    for i in range(files):
        words = " ".join(
            rng.choice(("alpha", "beta", "gamma", "delta", "backup", "chunk")) for _ in range(400)
        )
        (root / "etc" / "app" / f"conf{i}.txt").write_text(f"# file {i}\n{words}\n")
    (root / "var" / "lib" / "data.bin").write_bytes(rng.randbytes(3 * 1024 * 1024))
    (root / "var" / "empty").write_bytes(b"")
    os.symlink("etc/app/conf0.txt", root / "current.conf")
    os.utime(root / "var" / "empty", (1_700_000_000, 1_700_000_000))


def _generate_inputs(data: Path, seed: int) -> dict[str, list[ArchiveSource]]:
    """Input files for every group of :data:`SOURCE_LAYOUT` (blocking)."""
    rng = random.Random(seed)
    inputs: dict[str, list[ArchiveSource]] = {}
    for ns, group in SOURCE_LAYOUT:
        folder = data / group.replace("/", "-")
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text(f"{group} in namespace {ns or '(root)'}\n")
        sources = [ArchiveSource.parse(f"notes.blob={folder / 'notes.txt'}")]
        if group.startswith("vm/"):
            (folder / "disk.img").write_bytes(rng.randbytes(IMAGE_SIZE // (2 if group != "vm/101" else 1)))
            sources.append(ArchiveSource.parse(f"disk.fidx={folder / 'disk.img'}"))
        else:
            _make_tree(folder / "root", rng, files=8 if group.startswith("ct/") else 4)
            sources.append(ArchiveSource.parse(f"root.didx={folder / 'root'}"))
        inputs[group] = sources
    return inputs


def _change_image(path: Path, seed: int) -> None:
    """Overwrite 1 MiB in the middle of a disk image: one 4 MiB chunk changes."""
    with open(path, "r+b") as f:
        f.seek(IMAGE_SIZE // 2)
        f.write(random.Random(seed).randbytes(1024 * 1024))


def _trees_equal(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_trees_equal(a / d, b / d) for d in cmp.common_dirs)


def _setup_source(paths: Paths, store_path: Path, password: str) -> Datastore:
    datastores.create_datastore(paths, "source", store_path, sync_level=SyncLevel.NONE)
    store = datastores.open_datastore(paths, "source")
    for ns_text, _ in SOURCE_LAYOUT:
        store.create_namespace(Namespace.parse(ns_text), parents=True)
    user = AuthId.parse("sync@pbs")
    access.create_user(paths, user, password, comment="demo sync user")
    access.acl_update(paths, "/datastore/source", "DatastoreReader", user)
    return store


async def run_demo(workdir: Path, say: Say, *, seed: int = 42) -> DemoResult:
    """Run the whole demo in ``workdir`` (created if missing), reporting through ``say``."""
    result = DemoResult(workdir)
    src = Paths(workdir / "source" / "etc", workdir / "source" / "state")
    dst = Paths(workdir / "target" / "etc", workdir / "target" / "state")
    password = secrets.token_urlsafe(18)

    say(f"work folder: {workdir}")
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    store = await asyncio.to_thread(_setup_source, src, workdir / "source" / "store", password)
    inputs = await asyncio.to_thread(_generate_inputs, workdir / "data", seed)

    first_time = int(time.time()) - 3600
    for ns, group in SOURCE_LAYOUT:
        rep = await backup(
            store, Namespace.parse(ns), GroupId.parse(group), inputs[group], backup_time=first_time
        )
        say(f"  source {rep.summary()}")

    async with serve(src, "127.0.0.1", 0, tls=True) as info:
        say(f"source server {info.describe()}")
        await asyncio.to_thread(
            datastores.create_datastore, dst, "local", workdir / "target" / "store", sync_level=SyncLevel.NONE
        )
        assert info.fingerprint is not None
        await asyncio.to_thread(
            remotes.create_remote,
            dst,
            "demo-source",
            {
                "host": "127.0.0.1",
                "port": str(info.port),
                "auth-id": "sync@pbs",
                "password": password,
                "fingerprint": info.fingerprint,
                "comment": "the demo's loopback server",
            },
        )
        say(
            "remote create demo-source --host 127.0.0.1 --port "
            f"{info.port} --auth-id sync@pbs --password *** --fingerprint {info.fingerprint}"
        )
        job_values = {
            "remote": "demo-source",
            "remote-store": "source",
            "remote-ns": REMOTE_NS,
            "store": "local",
            "ns": LOCAL_NS,
            "schedule": "Wed 02:30",
            "comment": "demo",
        }
        job = await asyncio.to_thread(syncjobs.create_job, dst, "demo", job_values)
        say(
            f"sync-job create demo --remote demo-source --remote-store source --remote-ns {REMOTE_NS}"
            f" --store local --ns {LOCAL_NS} --schedule 'Wed 02:30'"
        )

        async with TaskManager(dst) as tasks:
            runner = SyncJobRunner(dst, tasks)

            async def run_job(title: str) -> PullReport:
                say(f"\n== {title}")
                handle = await runner.run(job, echo=lambda line: say(f"  {line}"))
                state = handle.state
                if state is None or state.kind not in (TaskStateKind.OK, TaskStateKind.WARNINGS):
                    raise IntegrityError(f"sync job ended with {state.serialize() if state else 'no state'}")
                report = runner.reports[job.id]
                result.reports.append(report)
                return report

            first = await run_job("first run: pull everything in scope")
            changed = Path(inputs["vm/101"][1].path)
            await asyncio.to_thread(_change_image, changed, seed + 1)
            rep = await backup(
                store,
                Namespace.parse(REMOTE_NS),
                GroupId.parse("vm/101"),
                inputs["vm/101"],
                backup_time=first_time + 1800,
            )
            say(f"\nchanged 1 MiB of vm/101's disk; source {rep.summary()}")
            second = await run_job("second run: only the changed chunks cross the wire")

    say(
        f"\nfirst run moved {format_size(first.bytes_downloaded)}, "
        f"second run {format_size(second.bytes_downloaded)}"
    )
    target = await asyncio.to_thread(datastores.open_datastore, dst, "local")
    ok = True
    checks = (
        ("vm/101", Namespace.parse(LOCAL_NS), "disk.fidx", first_time + 1800),
        ("ct/200", Namespace.parse(f"{LOCAL_NS}/team_one"), "root.didx", first_time),
    )
    await asyncio.to_thread((workdir / "restore").mkdir, exist_ok=True)
    for group, where, archive, t in checks:
        out = workdir / "restore" / group.replace("/", "-")
        await restore(target, where, SnapshotId(GroupId.parse(group), t), archive, out)
        source_input = Path(next(s.path for s in inputs[group] if s.name == archive))
        if archive.endswith(".fidx"):
            same = await asyncio.to_thread(filecmp.cmp, source_input, out, False)
        else:
            same = await asyncio.to_thread(_trees_equal, source_input, out)
        ok = ok and same
        verdict = "identical to the source" if same else "DIFFERENT from the source"
        say(f"restored {where}:{group} {archive} -> {out}: {verdict}")
        result.restored.append(f"{group}/{archive}")
    not_synced = [
        g for ns, g in SOURCE_LAYOUT if not Namespace.parse(ns).is_within(Namespace.parse(REMOTE_NS))
    ]
    say(f"out of scope, not synced: {', '.join(not_synced)}")
    result.ok = ok and second.bytes_downloaded < first.bytes_downloaded
    return result


__all__ = ["DemoResult", "run_demo"]
