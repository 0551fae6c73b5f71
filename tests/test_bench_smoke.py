"""The benchmark harness must not rot: a tiny ``python -m bench run --smoke`` in a subprocess.

It generates tiny datasets, starts ``asyncsync serve`` (HTTPS and plain HTTP),
runs every scenario for one round (rsync and rclone too when they are
installed; otherwise they are skipped with a reason), and writes the JSON and
Markdown results. No timing is asserted: only that each scenario produced a
verified result with a positive throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXPECTED = ("cold", "small", "incremental", "noop", "latency", "ratelimit")


@pytest.mark.timeout(240)
def test_bench_smoke_run_writes_results(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("ASYNCSYNC_CONFIG_DIR", None)
    env.pop("ASYNCSYNC_STATE_DIR", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--smoke",
            "--data-dir",
            str(tmp_path / "data"),
            "--results-dir",
            str(tmp_path / "results"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = (tmp_path / "results").glob("*-smoke.json")
    assert json_path.with_suffix(".md").is_file()
    results = json.loads(json_path.read_text())
    assert "asyncsync" not in results["skipped"], results["skipped"]
    scenarios = results["scenarios"]

    for name in EXPECTED:
        tools = scenarios[name]["tools"]
        assert tools, f"{name}: no tools ran"
        for tool, entry in tools.items():
            if tool.startswith(("rsync", "rclone")) and tool.split("-")[0] in results["skipped"]:
                continue
            assert entry["error"] is None, f"{name}/{tool}: {entry['error']}"
            assert entry["summary"]["mib_s"] > 0, f"{name}/{tool}"
            assert entry["summary"]["peak_rss_mib"] > 0, f"{name}/{tool}"

    cold = scenarios["cold"]["tools"]
    assert {"asyncsync-https", "asyncsync-http", "http-get", "https-get"} <= cold.keys()
    # each peer either ran or was skipped with a printed reason
    for peer, tools in (("rsync", ("rsync",)), ("rclone", ("rclone-http", "rclone-https"))):
        if peer in results["skipped"]:
            assert results["skipped"][peer]
            assert not any(t in cold for t in tools)
        else:
            assert all(t in cold for t in tools)
            assert all(peer_tool_ratio > 0 for t in tools for peer_tool_ratio in cold[t]["ratios"].values())

    for name in ("blake3", "zstd-decompress", "file-write"):
        assert scenarios["limits"]["tools"][name]["summary"]["mib_s"] > 0
    sizes = scenarios["scale"]["sizes"]
    assert len(sizes) == 2 and all(
        s["tools"]["asyncsync-https"]["summary"]["mib_s"] > 0 for s in sizes.values()
    )
    assert scenarios["ratelimit"]["achieved_rate"] > 0
    # latency: the target's row has the delay added by the server itself (--response-delay), the
    # proxy rows stay for the peer comparison
    latency = scenarios["latency"]["tools"]
    assert {"asyncsync-https", "asyncsync-https+25ms-server", "asyncsync-https+25ms"} <= latency.keys()
    targets = {t["target"]: t for t in results["targets"]}
    assert any(t.startswith("memory:") and v["met"] is not None for t, v in targets.items())
    assert any(
        t.startswith("latency:") and "--response-delay" in t and v["met"] is not None
        for t, v in targets.items()
    )


def _processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line or environment contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
                        break
            except OSError:  # gone, or not ours to read
                break
    return found


@pytest.mark.timeout(120)
def test_sigterm_stops_the_bench_and_everything_it_started(tmp_path: Path) -> None:
    """SIGTERM in the middle of a run: the runner exits and leaves no server, peer or
    measured tool behind (every process it started names its work or data folder)."""
    env = dict(os.environ)
    env.pop("ASYNCSYNC_CONFIG_DIR", None)
    env.pop("ASYNCSYNC_STATE_DIR", None)
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--smoke",
            "--scenario",
            "cold",
            "--data-dir",
            str(tmp_path / "data"),
            "--results-dir",
            str(tmp_path / "results"),
            "--work-dir",
            str(work),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the servers are up once this line is printed
        seen.append(line)
        if line.startswith("asyncsync servers:"):
            break
    else:
        pytest.fail("the bench ended before starting its servers:\n" + "".join(seen))
    assert _processes_mentioning(str(tmp_path)), "the servers should be running now"
    proc.terminate()
    proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(60) == 128 + 15
    left = _processes_mentioning(str(tmp_path))
    try:
        assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    finally:
        for pid in left:  # a failed run must not leave them behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
