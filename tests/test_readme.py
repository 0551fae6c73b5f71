"""The README's promises: its library example runs as written, and every command it names exists.

The Python example is taken from README.md (the first ```python block) and
executed as a module; its ``pull_local`` runs against real datastores in
``tmp_path`` and its ``pull_remote`` against the real server over TLS. The
command check collects every ``asyncsync GROUP [COMMAND]`` from the README's
code blocks and code spans and asks click for ``--help`` of each.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pullutil import T0, add_snapshot, new_store
from serverutil import RunningServer, remote, remote_server  # noqa: F401

import asyncsync
from asyncsync.cli.main import cli
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import PartialFailure
from asyncsync.names import GroupId, Namespace, SnapshotId

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def python_example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", readme_text(), re.S | re.M)
    assert blocks, "README.md has no ```python block"
    return str(blocks[0])


def load_example(printed: list[str]) -> ModuleType:
    """The README example as a module; its ``print`` collects what it prints into ``printed``."""

    def fake_print(*args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        printed.append(sep.join(str(a) for a in args))

    mod = ModuleType("readme_example")
    mod.__dict__["print"] = fake_print
    exec(compile(python_example(), str(README), "exec"), mod.__dict__)
    return mod


# ---- the library example -----------------------------------------------------------------------


def test_example_is_the_public_api() -> None:
    """The example imports only what ``asyncsync`` exports."""
    code = python_example()
    imported = re.search(r"^from asyncsync import (.+)$", code, re.M)
    assert imported is not None
    for name in (n.strip() for n in imported.group(1).split(",")):
        assert name in asyncsync.__all__, name
    assert "await asyncsync.pull(" in code


OFFSITE = Namespace.parse("offsite")


@pytest.fixture
def source(tmp_path: Path) -> list[SnapshotId]:
    """Datastore ``src`` (vm/100 with three snapshots, ct/200 with one) and an empty ``dst``."""
    src = new_store(tmp_path / "src", "src")
    rng = random.Random(7)
    snaps = [add_snapshot(src, "", "vm/100", T0 + i * 3600, rng=rng) for i in range(3)]
    snaps.append(add_snapshot(src, "", "ct/200", T0, rng=rng))
    new_store(tmp_path / "dst", "dst")
    return snaps


def _offsite_digests(tmp_path: Path) -> dict[str, str]:
    """snapshot -> manifest content digest, of ``dst`` namespace offsite (blocking)."""
    dst = Datastore.open(tmp_path / "dst")
    return {
        str(i.snapshot): dst.load_manifest(OFFSITE, i.snapshot).content_digest()
        for g in dst.list_groups(OFFSITE)
        for i in dst.list_snapshots(OFFSITE, g)
    }


def _source_digests(tmp_path: Path, snaps: list[SnapshotId]) -> dict[str, str]:
    src = Datastore.open(tmp_path / "src")
    return {str(s): src.load_manifest(Namespace.parse(""), s).content_digest() for s in snaps}


async def test_pull_local_example(tmp_path: Path, source: list[SnapshotId]) -> None:
    printed: list[str] = []
    example = load_example(printed)

    report = await example.pull_local(tmp_path / "src", tmp_path / "dst")

    assert isinstance(report, asyncsync.PullReport)
    assert report.ok
    # transfer_last=2: the newest two of vm/100, the only one of ct/200
    assert report.snapshots_synced == 3
    assert report.chunks_downloaded > 0
    assert report.bytes_downloaded > 0
    assert report.namespaces_created == 1
    assert sorted(str(g.group) for g in report.groups) == ["ct/200", "vm/100"]
    assert report.summary().startswith(f"pulled {report.chunks_downloaded} chunks")
    got = await asyncio.to_thread(_offsite_digests, tmp_path)
    assert got == await asyncio.to_thread(_source_digests, tmp_path, source[1:])
    # the log callback (print) got one line per snapshot and per group
    assert sum("downloaded" in line for line in printed) >= 3
    assert any(line.startswith("group offsite:vm/100") for line in printed)

    again = await example.pull_local(tmp_path / "src", tmp_path / "dst")
    assert again.chunks_downloaded == 0
    assert again.summary() == "no new data to pull"


@pytest.fixture
def conflicting_target(tmp_path: Path, source: list[SnapshotId]) -> None:
    """Group ct/200 already exists in ``dst``'s offsite namespace, owned by someone else."""
    dst = Datastore.open(tmp_path / "dst")
    dst.create_namespace(OFFSITE)
    dst.ensure_group(OFFSITE, GroupId.parse("ct/200"), asyncsync.AuthId.parse("other@pbs"))


@pytest.mark.usefixtures("conflicting_target")
async def test_pull_local_example_reports_failure(tmp_path: Path) -> None:
    """``raise_for_errors`` in the example turns a failed group into PartialFailure."""
    example = load_example([])
    with pytest.raises(PartialFailure, match="ct/200"):
        await example.pull_local(tmp_path / "src", tmp_path / "dst")


@pytest.fixture
def empty_target(tmp_path: Path) -> Path:
    new_store(tmp_path / "dst", "dst")
    return tmp_path / "dst"


def _snapshot_names(root: Path) -> list[str]:
    return sorted(f"{ns}:{s}" for ns, s in Datastore.open(root).iter_snapshots())


async def test_pull_remote_example(empty_target: Path, remote: Any, remote_server: RunningServer) -> None:
    example = load_example([])
    assert remote_server.fingerprint is not None

    report = await example.pull_remote(
        empty_target,
        remote_server.host,
        remote_server.port,
        remote_server.fingerprint,
        str(remote.sync_token),
        remote.sync_secret,
        remote.store_name,
    )

    assert report.ok
    assert report.chunks_downloaded > 0
    # the token may read every group of every namespace of the remote's store
    expected = await asyncio.to_thread(_snapshot_names, remote.store.root)
    assert report.snapshots_synced == len(expected)
    assert await asyncio.to_thread(_snapshot_names, empty_target) == expected


# ---- every command the README names --------------------------------------------------------------


def _command_lines(text: str) -> list[str]:
    """Where the README names commands: lines of its ``sh`` blocks, and its code spans."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    lines = [line.strip() for b in blocks for line in b.splitlines()]
    return [*lines, *re.findall(r"`([^`\n]+)`", rest)]


_COMMAND_RE = re.compile(r"asyncsync ([a-z][a-z-]*)((?: [a-z][a-z-]*(?:\\\|[a-z-]+)*)?)")


def readme_commands(text: str | None = None) -> set[tuple[str, ...]]:
    """Every ``asyncsync GROUP`` / ``asyncsync GROUP COMMAND`` the README tells people to run.

    ``a\\|b\\|c`` (alternatives in a table cell) names each of them.
    """
    found: set[tuple[str, ...]] = set()
    ctx = click.Context(cli)
    for line in _command_lines(readme_text() if text is None else text):
        m = _COMMAND_RE.match(line)
        if m is None:
            continue
        group = m.group(1)
        cmd = cli.get_command(ctx, group)
        words = m.group(2).strip()
        if isinstance(cmd, click.Group) and words:
            for sub in words.split("\\|"):
                found.add((group, sub))
        else:
            found.add((group,))
    return found


def test_readme_names_commands() -> None:
    """The extraction really finds the README's commands (else the next test proves nothing)."""
    cmds = readme_commands()
    for expected in [
        ("datastore", "create"),
        ("backup",),
        ("serve",),
        ("cert", "info"),
        ("remote", "create"),
        ("remote", "scan"),
        ("sync-job", "create"),
        ("sync-job", "run"),
        ("task", "list"),
        ("pull",),
        ("user", "generate-token"),
        ("acl", "update"),
        ("calendar",),
        ("demo",),
    ]:
        assert expected in cmds, expected
    assert len(cmds) >= 40


def missing_commands(commands: set[tuple[str, ...]]) -> list[str]:
    """Those of ``commands`` whose ``--help`` fails (with what click said)."""
    runner = CliRunner()
    missing = []
    for words in sorted(commands):
        result = runner.invoke(cli, [*words, "--help"], prog_name="asyncsync")
        if result.exit_code != 0 or f"Usage: asyncsync {' '.join(words)} " not in result.output:
            missing.append(f"asyncsync {' '.join(words)}: exit {result.exit_code}: {result.output[-200:]}")
    return missing


def test_every_readme_command_exists() -> None:
    missing = missing_commands(readme_commands())
    assert not missing, "\n".join(missing)


def test_a_wrong_command_would_be_caught() -> None:
    """The check notices a group, or a command of a group, that does not exist."""
    text = (
        "```sh\nasyncsync sync-job frobnicate x\nasyncsync remote list\n```\n"
        "Run `asyncsync frob` or `asyncsync task list\\|wait`.\n"
    )
    cmds = readme_commands(text)
    assert cmds == {
        ("sync-job", "frobnicate"),
        ("remote", "list"),
        ("frob",),
        ("task", "list"),
        ("task", "wait"),
    }
    missing = missing_commands(cmds)
    assert [m.split(":")[0] for m in missing] == [
        "asyncsync frob",
        "asyncsync sync-job frobnicate",
        "asyncsync task wait",
    ]
