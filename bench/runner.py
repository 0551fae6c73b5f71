"""The scenarios: which tools run on which dataset, in how many rounds, and how results are summarised.

Rounds are interleaved (round 1 of every tool, then round 2 of every tool, …)
so that drift of a shared machine hits all tools alike; ratios are only taken
between tools measured in the same run. Before each measured run the target's
file system is flushed (``syncfs``, untimed), so no tool pays for another's
dirty pages; after it, once verified, the target is removed (untimed, except
where the next round needs it: the noop targets), so each tool writes into
memory that the page cache has just given back, never into memory the tools
before it left full (targets of many files are moved aside instead and their
page cache dropped, see ``DEFER_REMOVAL_CHUNKS``). On this VM the memory
matters: 2 GiB of new files written into memory not recycled from a
just-removed target cost a pull 3–6 s of system time instead of 1.2–1.5 s (the
balloon's free page reporting hands memory that lies free back to the host,
and the next write into it faults there; docs/performance.md, "Session 4" and
"Session 5"), and it fell on whichever tools ran last in a round.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncsync.datastore.chunkstore import syncfs

from . import delayproxy
from .asyncsync_tool import Asyncsync, AsyncsyncServer, compile_package, tool_env, unavailable_reason
from .datasets import Dataset, DatasetSpec, GiB, MiB, count_chunks, ensure_dataset
from .peers import RcloneHttp, RsyncDaemon, ensure_tools, tool_version
from .procs import Run, Server, ToolFailed, run_measured, tail
from .tlsutil import self_signed

KiB = 1024
#: A target of at least this many chunks is moved aside after its run, and all are removed when
#: the scenario ends. This machine's root file system is an ext4 without a journal: its inode
#: allocator skips every free inode deleted less than 60 s ago, checking each in the buffer cache,
#: so right after a removal of 16,000 files, creating 16,000 new ones cost 17-21 s of system time
#: instead of 3.4 s after a 65 s pause (``perf``: find_get_block_common, recently_deleted,
#: find_inode_bit, ext4_get_group_desc: 73 % of it). Whichever tool ran next paid.
DEFER_REMOVAL_CHUNKS = 2000
#: ext4's "recently deleted" window for a flushed inode-table block (60 s), plus a margin
RECENTLY_DELETED_S = 61.0
SCENARIOS = ("limits", "cold", "small", "incremental", "noop", "latency", "ratelimit", "scale")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    cold: int
    small: int
    incr_groups: int
    incr_snapshots: int
    incr_chunks: int
    incr_chunk_size: int
    noop_groups: int
    noop_snapshots: int
    scale: tuple[int, int]
    rate: int
    rounds: int
    limit_mib: int
    latency_ms: float = 25.0
    #: smoke: each code path once (plain HTTP and GET limits in ``cold`` only), to stay well under a minute
    minimal: bool = False


PROFILES = {
    "full": Profile(
        "full", 2 * GiB, 1 * GiB, 5, 10, 8500, 16 * KiB, 1000, 5, (1 * GiB, 4 * GiB), 50 * MiB, 3, 1024
    ),
    "quick": Profile(
        "quick", 512 * MiB, 128 * MiB, 4, 5, 2500, 8 * KiB, 200, 5, (256 * MiB, 1 * GiB), 50 * MiB, 3, 256
    ),
    "smoke": Profile(
        "smoke", 16 * MiB, 2 * MiB, 2, 3, 100, 4 * KiB, 10, 2, (8 * MiB, 16 * MiB), 8 * MiB, 1, 16
    ),
}


@dataclass(slots=True)
class Tool:
    """One contender in a scenario. ``run(target, log)`` is measured; ``reset`` and ``verify`` are not."""

    name: str
    run: Callable[[Path, Path], Run]
    reset: Callable[[Path], None]
    verify: Callable[[Path, Run], str | None]
    #: the unit it moves: "chunks" (asyncsync, limits) or "files" (rsync, rclone)
    unit: str = "files"


@dataclass
class Bench:
    """One harness run: folders, profile, tool availability, and the results collected so far."""

    profile: Profile
    data_dir: Path
    results_dir: Path
    work: Path
    rounds: int
    install_peers: bool
    log: Callable[[str], None] = print
    results: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    asyncsync: Asyncsync | None = None
    asyncsync_reason: str | None = None
    ds: dict[str, Dataset] = field(default_factory=dict)
    servers: dict[bool, AsyncsyncServer] = field(default_factory=dict)
    _stack: list[Callable[[], None]] = field(default_factory=list)
    _tls: tuple[Path, Path] | None = None

    # ---- set-up ------------------------------------------------------------

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        peers = ensure_tools(["rsync", "rclone"], install=self.install_peers)
        for name, reason in peers.items():
            if reason:
                self.skipped[name] = reason
                self.log(f"skipping {name}: {reason}")
        exe = [sys.executable, "-m", "asyncsync"]
        self.asyncsync_reason = unavailable_reason(exe)
        if self.asyncsync_reason:
            self.skipped["asyncsync"] = self.asyncsync_reason
            self.log(f"skipping asyncsync: {self.asyncsync_reason}")
        else:
            self.asyncsync = Asyncsync(self.work / "asyncsync", exe)
        self.results = {
            "meta": self._meta(exe),
            "datasets": {},
            "scenarios": {},
            "skipped": self.skipped,
        }

    def _meta(self, exe: list[str]) -> dict[str, Any]:
        startup: float | None = None
        if not self.asyncsync_reason:
            compile_package()
            t = time.perf_counter()
            subprocess.run([*exe, "--version"], capture_output=True, check=False, env=tool_env())
            startup = round(time.perf_counter() - t, 3)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": socket.gethostname(),
            "profile": self.profile.name,
            "rounds": self.rounds,
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "load_avg_start": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "versions": {
                "rsync": tool_version("rsync") if "rsync" not in self.skipped else None,
                "rclone": tool_version("rclone") if "rclone" not in self.skipped else None,
                "asyncsync": _asyncsync_version(),
            },
            "asyncsync_startup_s": startup,
        }

    def tls(self) -> tuple[Path, Path]:
        if self._tls is None:
            self._tls = self_signed(self.work / "tls")
        return self._tls

    def dataset(self, spec: DatasetSpec) -> Dataset:
        ds = ensure_dataset(spec, self.data_dir, log=self.log)
        self.results["datasets"][spec.key] = ds.to_json()
        return ds

    def logfile(self, scenario: str, tool: str) -> Path:
        return self.work / "logs" / f"{scenario}-{tool}.log"

    # ---- the measuring loop -------------------------------------------------

    def run_tools(self, scenario: str, ds: Dataset, tools: list[Tool], **info: Any) -> dict[str, Any]:
        """Run every tool for ``self.rounds`` interleaved rounds and summarise them."""
        out: dict[str, Any] = {
            "dataset": ds.spec.key,
            "transfer_bytes": ds.transfer_bytes,
            "transfer_chunks": ds.transfer_chunks,
            "transfer_files": ds.transfer_files,
            **info,
            "tools": {t.name: {"unit": t.unit, "rounds": [], "error": None} for t in tools},
        }
        failed: set[str] = set()
        graveyard = self.work / "set-aside" / scenario
        for r in range(self.rounds):
            for tool in tools:
                if tool.name in failed:
                    continue
                entry = out["tools"][tool.name]
                target = self.work / "targets" / scenario / tool.name
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tool.reset(target)
                    syncfs(target.parent)
                    run = tool.run(target, self.logfile(scenario, tool.name))
                    problem = tool.verify(target, run)
                except ToolFailed as exc:
                    problem = str(exc)
                    run = None
                if problem:
                    entry["error"] = problem
                    failed.add(tool.name)
                    self.log(f"  {scenario}/{tool.name} round {r + 1}: FAILED: {problem.splitlines()[0]}")
                    continue
                assert run is not None
                if tool.reset is not _keep:  # untimed
                    if ds.chunks >= DEFER_REMOVAL_CHUNKS:
                        self._set_aside(
                            target, graveyard / f"{tool.name}-{r + 1}", drop_cache=ds.base is None
                        )
                    else:
                        _rm(target)  # the next tool reuses the memory this target held
                entry["rounds"].append(run.to_json())
                self.log(
                    f"  {scenario}/{tool.name} round {r + 1}: {run.wall_s:.2f} s, "
                    f"{_mib_s(ds.transfer_bytes, run):.1f} MiB/s, rss {run.max_rss_kib / 1024:.0f} MiB"
                )
        for name, entry in out["tools"].items():
            unit = entry["unit"]
            count = ds.transfer_chunks if unit == "chunks" else ds.transfer_files
            entry["summary"] = summarize(entry["rounds"], ds.transfer_bytes, count)
            if not entry["rounds"] and not entry["error"]:
                entry["error"] = "no rounds"
            del name
        for t in tools:
            shutil.rmtree(self.work / "targets" / scenario / t.name, ignore_errors=True)
        if graveyard.exists():
            _rm(graveyard)
            syncfs(self.work)
            self.log(f"  (removed the set-aside targets; {RECENTLY_DELETED_S:.0f} s for ext4 to forget them)")
            time.sleep(RECENTLY_DELETED_S)
        self.results["scenarios"][scenario] = out
        return out

    def _set_aside(self, target: Path, to: Path, *, drop_cache: bool) -> None:
        """Move a target with many files out of the way instead of removing it (see
        :data:`DEFER_REMOVAL_CHUNKS`); with ``drop_cache`` its page cache is released
        at once, so that, as after a removal, the next tool writes into memory just
        given back. (Not for targets hard-linked to a template: their inodes are the
        template's and the source's too.)"""
        if not target.exists():  # the limits (http-get, https-get) write nothing
            return
        to.parent.mkdir(parents=True, exist_ok=True)
        target.rename(to)
        if drop_cache:
            syncfs(to)  # dirty pages cannot be dropped
            for folder, _, files in os.walk(to):
                for name in files:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)

    # ---- tool factories ------------------------------------------------------

    def copy_verify(self, ds: Dataset) -> Callable[[Path, Run], str | None]:
        def verify(target: Path, run: Run) -> str | None:
            chunks = count_chunks(target)
            snaps = _count_manifests(target)
            if chunks != ds.chunks or snaps != ds.snapshots:
                return (
                    f"target has {chunks} chunks and {snaps} snapshots, "
                    f"expected {ds.chunks} and {ds.snapshots}"
                )
            return None

        return verify

    def peer_tools(
        self, scenario: str, ds: Dataset, stack: list[Callable[[], None]], *, template: Path | None = None
    ) -> list[Tool]:
        """rsync, rclone over HTTP and HTTPS (those that are installed), syncing ``ds.source``."""
        tools: list[Tool] = []

        def reset(target: Path) -> None:
            _rm(target)
            if template is not None:
                subprocess.run(["cp", "-al", str(template), str(target)], check=True)
            else:
                target.mkdir()

        verify = self.copy_verify(ds)
        if "rsync" not in self.skipped:
            d = RsyncDaemon(ds.source, self.work / "peers" / scenario / "rsync")
            stack.append(d.stop)
            tools.append(Tool("rsync", d.sync, reset, verify))
        if "rclone" not in self.skipped:
            for tls in (False, True):
                c = RcloneHttp(
                    ds.source,
                    self.work / "peers" / scenario / ("rclone-https" if tls else "rclone-http"),
                    tls=self.tls() if tls else None,
                )
                stack.append(c.stop)
                tools.append(Tool("rclone-https" if tls else "rclone-http", c.copy, reset, verify))
        return tools

    def get_tools(self, scenario: str, ds: Dataset, stack: list[Callable[[], None]]) -> list[Tool]:
        """The transfer limit: parallel GET of the chunk files from the bench's own aiohttp server."""
        listing = self.work / "peers" / scenario / "chunks.list"
        listing.parent.mkdir(parents=True, exist_ok=True)
        rels = sorted(
            os.path.relpath(os.path.join(dp, n), ds.source)
            for dp, _, names in os.walk(ds.source / ".chunks")
            for n in names
        )
        listing.write_text("\n".join(rels) + "\n")
        expected = sum((ds.source / r).stat().st_size for r in rels)
        tools: list[Tool] = []
        for tls in (False, True):
            name = "https-get" if tls else "http-get"
            cmd = [sys.executable, "-m", "bench.httpget", "serve", str(ds.source)]
            if tls:
                cert, key = self.tls()
                cmd += ["--cert", str(cert), "--key", str(key)]
            srv = Server(
                name + " server",
                cmd,
                log=self.work / "peers" / scenario / f"{name}-server.log",
                cwd=_repo_root(),
            )
            stack.append(srv.stop)
            port = int(srv.wait_for_output(r"listening on (\d+)").group(1))
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"

            def run(target: Path, log: Path, url: str = url, srv: Server = srv, tls: bool = tls) -> Run:
                cmd = [sys.executable, "-m", "bench.httpget", "get", url, str(listing)]
                if tls:
                    cmd.append("--insecure")
                before = srv.cpu_s()
                r = run_measured(cmd, log=log, cwd=_repo_root())
                r.server_cpu_s = srv.cpu_s() - before
                r.server_rss_kib = srv.peak_rss_kib()
                res = _last_json(log)
                r.extra = {"bytes": float(res["bytes"]), "work_s": float(res["seconds"])}
                return r

            def verify(target: Path, r: Run) -> str | None:
                got = int(r.extra.get("bytes", 0))
                return None if got == expected else f"read {got} bytes, expected {expected}"

            tools.append(Tool(name, run, lambda t: None, verify, unit="chunks"))
        return tools

    def asyncsync_tools(
        self,
        scenario: str,
        ds: Dataset,
        *,
        store: str,
        transports: tuple[bool, ...] = (True, False),
        template: Path | None = None,
        name_suffix: str = "",
        port_override: Callable[[AsyncsyncServer], int] | None = None,
        rate_in: str | None = None,
        server: AsyncsyncServer | None = None,
    ) -> list[Tool]:
        """Pulls over HTTPS and/or plain HTTP from this run's asyncsync servers.

        ``server`` replaces the run's shared server (of the same transport) for these tools.
        """
        a = self.asyncsync
        if a is None:
            return []
        if self.profile.minimal and scenario != "cold":
            transports = tuple(t for t in transports if t)
        tools: list[Tool] = []
        verify = self.copy_verify(ds)
        for tls in transports:
            kind = "https" if tls else "http"
            srv = server if server is not None else self.servers[tls]
            remote = _safe(f"{scenario}-{kind}{name_suffix}")
            port = port_override(srv) if port_override else srv.port
            a.set_remote(remote, port, srv.fingerprint, tls=tls)
            tgt_name = _safe(f"t-{scenario}-{kind}{name_suffix}")

            def reset(target: Path, tgt_name: str = tgt_name) -> None:
                assert a is not None
                a.reset_target(tgt_name, target, template)

            def run(
                target: Path,
                log: Path,
                remote: str = remote,
                tgt_name: str = tgt_name,
                srv: AsyncsyncServer = srv,
            ) -> Run:
                assert a is not None
                return a.pull(remote, store, tgt_name, log=log, server=srv, rate_in=rate_in)

            tools.append(Tool(f"asyncsync-{kind}{name_suffix}", run, reset, verify, unit="chunks"))
        return tools

    # ---- datasets and servers shared by the scenarios ---------------------------

    def prepare_datasets(self, names: list[str]) -> None:
        """Generate (or reuse) every dataset the chosen scenarios need, and register them as sources."""
        p = self.profile
        want = set(names)
        if want & {"cold", "latency", "ratelimit"}:
            self.ds["cold"] = self.dataset(DatasetSpec("cold", size=p.cold))
        if "small" in want:
            self.ds["small"] = self.dataset(DatasetSpec("small", size=p.small, chunk_size=64 * KiB))
        if "incremental" in want:
            self.ds["incremental"] = self.dataset(
                DatasetSpec(
                    "incremental",
                    chunk_size=p.incr_chunk_size,
                    groups=p.incr_groups,
                    snapshots=p.incr_snapshots,
                    chunks_per_snapshot=p.incr_chunks,
                )
            )
        if "noop" in want:
            self.ds["noop"] = self.dataset(
                DatasetSpec("noop", chunk_size=4 * KiB, groups=p.noop_groups, snapshots=p.noop_snapshots)
            )
        if "scale" in want:
            for size in p.scale:
                self.ds[f"scale-{_size_label(size)}"] = self.dataset(DatasetSpec("cold", size=size))
        if self.asyncsync is None:
            return
        for name, ds in self.ds.items():
            store = {"incremental": "incr"}.get(name, name)
            self.asyncsync.add_source(store, ds.source)
            if ds.base is not None:
                self.asyncsync.add_source(store + "-base", ds.base)

    def start_servers(self) -> None:
        """One ``asyncsync serve`` over HTTPS and one over plain HTTP for the whole run."""
        a = self.asyncsync
        if a is None:
            return
        started = [
            a.start_server(tls=tls, log=self.work / "logs" / f"serve-{'https' if tls else 'http'}.log")
            for tls in (True, False)
        ]
        for srv in started:
            self._stack.append(srv.stop)
        for srv in started:
            self.servers[srv.wait_ready().tls] = srv
        self.log(
            f"asyncsync servers: https on {self.servers[True].port}, http on {self.servers[False].port}"
            + (
                ""
                if a.plain_via_cli
                else " (plain-HTTP pulls run the library pull: the remote config has no plain-HTTP setting)"
            )
        )

    def stop_servers(self) -> None:
        while self._stack:
            stop = self._stack.pop()
            try:
                stop()
            except Exception as exc:  # a server that will not stop must not hide the results
                self.log(f"  warning: stopping a server failed: {exc}")

    # ---- scenarios -----------------------------------------------------------

    def scenario_limits(self) -> None:
        p = self.profile
        out: dict[str, Any] = {"tools": {}}
        for name in ("blake3", "zstd-decompress", "crc32", "file-write"):
            runs: list[dict[str, Any]] = []
            for _ in range(self.rounds):
                log = self.logfile("limits", name)
                cmd = [sys.executable, "-m", "bench.limits", name, "--mib", str(p.limit_mib)]
                if name == "file-write":
                    cmd += ["--dir", str(self.work)]
                r = run_measured(cmd, log=log, cwd=_repo_root())
                res = _last_json(log)
                r.extra = {"bytes": float(res["bytes"]), "work_s": float(res["seconds"])}
                runs.append(r.to_json())
            mibs = [x["extra"]["bytes"] / MiB / x["extra"]["work_s"] for x in runs]
            out["tools"][name] = {
                "rounds": runs,
                "summary": {"mib_s": statistics.median(mibs), "mib_s_min": min(mibs), "mib_s_max": max(mibs)},
            }
            self.log(f"  limits/{name}: {statistics.median(mibs):.0f} MiB/s")
        self.results["scenarios"]["limits"] = out

    def _with_stack(self, fn: Callable[[list[Callable[[], None]]], None]) -> None:
        stack: list[Callable[[], None]] = []
        try:
            fn(stack)
        finally:
            for stop in reversed(stack):
                try:
                    stop()
                except Exception as exc:  # a server that will not stop must not hide the results
                    self.log(f"  warning: stopping a server failed: {exc}")

    def _transfer(self, scenario: str) -> None:
        """cold and small: limits, peers and asyncsync into an empty target."""
        ds = self.ds[scenario]

        def body(stack: list[Callable[[], None]]) -> None:
            tools = [] if self.profile.minimal and scenario != "cold" else self.get_tools(scenario, ds, stack)
            tools += self.peer_tools(scenario, ds, stack)
            tools += self.asyncsync_tools(scenario, ds, store=scenario)
            self.run_tools(scenario, ds, tools)

        self._with_stack(body)

    def scenario_cold(self) -> None:
        self._transfer("cold")

    def scenario_small(self) -> None:
        self._transfer("small")

    def scenario_incremental(self) -> None:
        ds = self.ds["incremental"]
        assert ds.base is not None

        def body(stack: list[Callable[[], None]]) -> None:
            tools = self.peer_tools("incremental", ds, stack, template=ds.base)
            info: dict[str, Any] = {}
            a = self.asyncsync
            if a is not None:
                # the pre-synced state is what asyncsync itself made of the base datastore
                template = self.work / "templates" / "incremental"
                template.parent.mkdir(parents=True, exist_ok=True)
                srv = self.servers[True]
                a.set_remote("incr-initial", srv.port, srv.fingerprint, tls=True)
                a.reset_target("incr-template", template)
                r = a.pull(
                    "incr-initial",
                    "incr-base",
                    "incr-template",
                    log=self.logfile("incremental", "initial"),
                    server=srv,
                )
                info["initial_pull"] = r.to_json()
                self.log(f"  incremental: initial asyncsync pull of the base: {r.wall_s:.1f} s")
                tools += self.asyncsync_tools("incremental", ds, store="incr", template=template)
            self.run_tools("incremental", ds, tools, **info)

        self._with_stack(body)

    def scenario_noop(self) -> None:
        ds = self.ds["noop"]

        def body(stack: list[Callable[[], None]]) -> None:
            tools = self.peer_tools("noop", ds, stack)
            tools += self.asyncsync_tools("noop", ds, store="noop")
            # a first sync (reported, not part of the rounds) fills each target; the rounds find nothing new
            initial: dict[str, Any] = {}
            for t in tools:
                target = self.work / "targets" / "noop" / t.name
                target.parent.mkdir(parents=True, exist_ok=True)
                t.reset(target)
                try:
                    initial[t.name] = t.run(target, self.logfile("noop", t.name + "-initial")).to_json()
                except ToolFailed as exc:
                    initial[t.name] = {"error": str(exc)}
            for t in tools:
                t.reset = _keep
            self.run_tools("noop", _nothing_to_move(ds), tools, initial=initial)

        self._with_stack(body)

    def _proxy(
        self, stack: list[Callable[[], None]], port: int, delay_ms: float, name: str
    ) -> tuple[int, Path]:
        """Start a delay proxy in front of ``port``; returns its port and its stats file."""
        stats = self.work / "logs" / f"{name}.stats.json"
        stats.unlink(missing_ok=True)
        srv = Server(
            name,
            [
                sys.executable,
                "-m",
                "bench.delayproxy",
                "--target-port",
                str(port),
                "--delay-ms",
                str(delay_ms),
                "--stats",
                str(stats),
            ],
            log=self.work / "logs" / f"{name}.log",
            cwd=_repo_root(),
        )
        stack.append(srv.stop)
        return int(srv.wait_for_output(r"listening on (\d+)").group(1)), stats

    def _delayed_server(self, stack: list[Callable[[], None]], delay_ms: float) -> AsyncsyncServer:
        """A second ``asyncsync serve`` (HTTPS, same source datastores) with ``--response-delay``."""
        a = self.asyncsync
        assert a is not None
        srv = a.start_server(
            tls=True,
            log=self.work / "logs" / "serve-https-delay.log",
            extra_args=["--response-delay", f"{delay_ms:g}ms"],
        )
        stack.append(srv.stop)
        return srv.wait_ready()

    def scenario_latency(self) -> None:
        """asyncsync-https direct, then with the latency added (a) by the server itself, the target's
        row: no extra process shares the cores; (b) by the delay proxy, in front of asyncsync and
        rclone alike, the peer comparison (the proxy's CPU weighs on both)."""
        p = self.profile
        ds = self.ds["cold"]
        suffix = f"+{p.latency_ms:g}ms"

        def body(stack: list[Callable[[], None]]) -> None:
            tools = self.asyncsync_tools("latency", ds, store="cold", transports=(True,))
            info: dict[str, Any] = {"delay_ms": p.latency_ms}
            if self.asyncsync is not None:
                try:
                    delayed = self._delayed_server(stack, p.latency_ms)
                except ToolFailed as exc:
                    # the proxy rows can still run; the report falls back to them and says so
                    info["server_delay_error"] = str(exc)
                    self.log(f"  latency: the --response-delay server did not start: {exc}")
                else:
                    tools += self.asyncsync_tools(
                        "latency",
                        ds,
                        store="cold",
                        transports=(True,),
                        name_suffix=suffix + "-server",
                        server=delayed,
                    )
            tools += self.asyncsync_tools(
                "latency",
                ds,
                store="cold",
                transports=(True,),
                name_suffix=suffix,
                port_override=lambda srv: self._proxy(stack, srv.port, p.latency_ms, "latency-proxy")[0],
            )
            if "rclone" not in self.skipped:
                c = RcloneHttp(ds.source, self.work / "peers" / "latency" / "rclone-https", tls=self.tls())
                stack.append(c.stop)
                pport, _ = self._proxy(stack, c.port, p.latency_ms, "latency-proxy-rclone")
                c.url = f"https://127.0.0.1:{pport}/"
                tools.append(Tool("rclone-https" + suffix, c.copy, _fresh_dir, self.copy_verify(ds)))
            self.run_tools("latency", ds, tools, **info)

        self._with_stack(body)

    def scenario_ratelimit(self) -> None:
        p = self.profile
        ds = self.ds["cold"]
        a = self.asyncsync
        if a is None:
            self.results["scenarios"]["ratelimit"] = {"skipped": self.asyncsync_reason, "tools": {}}
            return
        rate = p.rate
        srv = self.servers[True]
        verify = self.copy_verify(ds)
        windows: list[dict[str, float]] = []

        def run(target: Path, log: Path) -> Run:
            inner: list[Callable[[], None]] = []
            try:
                pport, stats = self._proxy(inner, srv.port, 0, "ratelimit-proxy")
                a.set_remote("ratelimit", pport, srv.fingerprint, tls=True)
                r = a.pull(
                    "ratelimit", "cold", "t-ratelimit", log=log, server=srv, rate_in=f"{rate // MiB}MiB"
                )
            finally:
                for stop in reversed(inner):
                    stop()
            s = delayproxy.summarize(json.loads(stats.read_text()), rate, rate)
            windows.append(s)
            r.extra = {k: float(v) for k, v in s.items()}
            r.extra["process_rate"] = ds.transfer_bytes / r.wall_s
            return r

        def reset(target: Path) -> None:
            a.reset_target("t-ratelimit", target)

        out = self.run_tools(
            "ratelimit",
            ds,
            [Tool("asyncsync-https", run, reset, verify, unit="chunks")],
            rate=rate,
            burst=rate,
        )
        if windows:
            out["achieved_rate"] = statistics.median(w["achieved_rate"] for w in windows)
            out["rate_error"] = statistics.median(w["rate_error"] for w in windows)
            out["max_excess_1s"] = max(w["max_excess_1s"] for w in windows)

    def scenario_scale(self) -> None:
        if self.asyncsync is None:
            self.results["scenarios"]["scale"] = {"skipped": self.asyncsync_reason, "tools": {}}
            return
        out: dict[str, Any] = {"sizes": {}}
        for size in self.profile.scale:
            label = f"scale-{_size_label(size)}"
            ds = self.ds[label]
            tools = self.asyncsync_tools(label, ds, store=label, transports=(True,))
            out["sizes"][_size_label(size)] = self.run_tools(label, ds, tools)
            self.results["scenarios"].pop(label, None)
        self.results["scenarios"]["scale"] = out

    def run(self, names: list[str]) -> dict[str, Any]:
        """Generate the data, start the servers, run the scenarios in order; returns the results."""
        try:
            self.log("== datasets")
            self.prepare_datasets(names)
            self.start_servers()
            for name in names:
                self.log(f"== {name}")
                t = time.perf_counter()
                try:
                    getattr(self, f"scenario_{name}")()
                except ToolFailed as exc:
                    self.log(f"  {name} failed: {exc}")
                    self.results["scenarios"][name] = {"error": str(exc), "tools": {}}
                self.log(f"  ({time.perf_counter() - t:.1f} s)")
        finally:
            self.stop_servers()
        self.results["meta"]["load_avg_end"] = os.getloadavg()
        return self.results


def summarize(rounds: list[dict[str, Any]], nbytes: int, count: int) -> dict[str, Any]:
    """Median and spread of the rounds of one tool, as throughput and cost."""
    if not rounds:
        return {}
    # a limit's own measured work time excludes its process start-up; every real tool is timed whole
    walls = [r["extra"].get("work_s", r["wall_s"]) for r in rounds]
    sizes = [r["extra"].get("bytes", nbytes) for r in rounds]
    wall = statistics.median(walls)
    size = statistics.median(sizes)
    gib = max(size, 1) / GiB
    cpu = statistics.median(r["user_s"] + r["sys_s"] for r in rounds)
    srv = [r["server_cpu_s"] for r in rounds if r.get("server_cpu_s") is not None]
    srv_rss = [r["server_rss_kib"] for r in rounds if r.get("server_rss_kib")]
    return {
        "wall_s": wall,
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "mib_s": size / MiB / wall,
        "mib_s_min": size / MiB / max(walls),
        "mib_s_max": size / MiB / min(walls),
        "per_s": count / wall,
        "cpu_s": cpu,
        "cpu_s_per_gib": cpu / gib,
        "server_cpu_s": statistics.median(srv) if srv else None,
        "server_cpu_s_per_gib": statistics.median(srv) / gib if srv else None,
        "peak_rss_mib": max(r["max_rss_kib"] for r in rounds) / 1024,
        "server_peak_rss_mib": max(srv_rss) / 1024 if srv_rss else None,
        "rounds": len(rounds),
    }


def _mib_s(nbytes: int, run: Run) -> float:
    size = run.extra.get("bytes", nbytes)
    return size / MiB / max(run.extra.get("work_s", run.wall_s), 1e-9)


def _count_manifests(root: Path) -> int:
    n = 0
    for dp, dirs, names in os.walk(root):
        if ".chunks" in dirs:
            dirs.remove(".chunks")
        if "index.json.blob" in names and not os.path.basename(dp).startswith("."):
            n += 1
    return n


def _nothing_to_move(ds: Dataset) -> Dataset:
    """``ds`` as seen by a sync into an up-to-date target: the whole tree is compared, nothing moves.

    Throughput is then reported over the dataset's size (what was checked), so that
    ratios between tools are ratios of wall times."""
    return Dataset(
        spec=ds.spec,
        folder=ds.folder,
        source=ds.source,
        base=ds.base,
        total_bytes=ds.total_bytes,
        total_files=ds.total_files,
        chunks=ds.chunks,
        snapshots=ds.snapshots,
        groups=ds.groups,
        transfer_bytes=ds.total_bytes,
        transfer_files=ds.total_files,
        transfer_chunks=ds.chunks,
    )


def _safe(name: str) -> str:
    return name.replace("+", "-").replace("@", "-")


def _keep(target: Path) -> None:
    """No reset: the noop rounds run against the already synced target."""


def _fresh_dir(target: Path) -> None:
    _rm(target)
    target.mkdir()


def _rm(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)


def _size_label(size: int) -> str:
    return f"{size // GiB}GiB" if size % GiB == 0 else f"{size // MiB}MiB"


def _last_json(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            obj: dict[str, Any] = json.loads(line)
            return obj
    raise ToolFailed(f"no JSON result in {log}:\n{tail(log)}")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _asyncsync_version() -> str:
    try:
        import asyncsync

        return str(asyncsync.__version__)
    except (ImportError, AttributeError):
        return "?"


__all__ = ["PROFILES", "SCENARIOS", "Bench", "Profile", "Tool", "summarize"]
