"""``asyncsync demo``: the README's first command, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from asyncsync.datastore.datastore import Datastore
from asyncsync.names import Namespace


def test_demo_runs_a_real_pull_and_checks_it(tmp_path: Path, cli_env: dict[str, str]) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", "demo", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "listening on https://127.0.0.1:" in out
    assert out.count("TASK OK") == 2
    assert "identical to the source" in out and "DIFFERENT" not in out
    assert "every check passed" in out

    # the target holds exactly the mapped namespace tree of the reference example
    target = Datastore.open(work / "target" / "store")
    assert [str(ns) for ns in target.list_namespaces()] == [
        "",
        "location_a_dep_x",
        "location_a_dep_x/team_one",
        "location_a_dep_x/team_two",
    ]
    vm = target.list_snapshots(
        Namespace.parse("location_a_dep_x"), target.list_groups(Namespace.parse("location_a_dep_x"))[0]
    )
    assert len(vm) == 2  # the first pull and the changed second snapshot
    # the second run moved one 4 MiB chunk, not the whole 32 MiB image
    assert "second run 4.0 MiB" in out
