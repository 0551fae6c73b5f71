"""Child processes: run one measured, start servers, read their CPU and memory from /proc.

Each tool runs in its own process so that its wall time, CPU time and peak RSS
are its own: :func:`run_measured` starts it through the small launcher
:mod:`bench._spawn`, which reaps it with ``os.wait4`` and reports its ``rusage``
(which also covers the grandchildren it waited for). Servers are
sampled through ``/proc/<pid>/stat`` (utime, stime, and reaped children's
cutime, cstime) and ``/proc/<pid>/status`` (VmHWM, the peak RSS).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SPAWN = Path(__file__).resolve().parent / "_spawn.py"


class ToolFailed(RuntimeError):
    """A measured tool exited with an error or did not start."""


@dataclass(slots=True)
class Run:
    """One measured run of a client tool (and optionally the server it talked to)."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    server_cpu_s: float | None = None
    server_rss_kib: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 4),
            "user_s": round(self.user_s, 4),
            "sys_s": round(self.sys_s, 4),
            "max_rss_kib": self.max_rss_kib,
            "server_cpu_s": None if self.server_cpu_s is None else round(self.server_cpu_s, 4),
            "server_rss_kib": self.server_rss_kib,
            "extra": self.extra,
        }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the small race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc is not None and proc.poll() is not None:
            raise ToolFailed(f"server exited with status {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise ToolFailed(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def tail(path: Path, n: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_measured(
    cmd: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    check: bool = True,
) -> Run:
    """Run ``cmd`` to completion through :mod:`bench._spawn`; its output goes to ``log``.

    Returns the child's own wall time, CPU time and peak RSS. Raises
    :class:`ToolFailed` on a non-zero exit (with ``check``) or a timeout.
    """
    usage_file = log.with_name(log.name + ".rusage.json")
    usage_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        with _starting():
            proc = subprocess.Popen(
                [sys.executable, "-S", "-I", str(_SPAWN), str(usage_file), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            _TOOLS.add(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_tool(proc)
            raise ToolFailed(f"{Path(cmd[0]).name} did not finish in {timeout:.0f} s:\n{tail(log)}") from None
        except BaseException:  # the bench is stopping (SIGTERM, Ctrl-C): take the tool with it
            _kill_tool(proc)
            raise
        finally:
            _TOOLS.discard(proc)
    if check and proc.returncode != 0:
        raise ToolFailed(f"{Path(cmd[0]).name} exited with {proc.returncode}:\n{tail(log)}")
    try:
        u = json.loads(usage_file.read_text())
    except (OSError, ValueError) as exc:
        raise ToolFailed(f"no resource usage for {Path(cmd[0]).name}: {exc}") from None
    return Run(float(u["wall_s"]), float(u["user_s"]), float(u["sys_s"]), int(u["max_rss_kib"]))


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` plus its reaped children, from /proc; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
    return sum(int(x) for x in fields[11:15]) / _CLK_TCK


def proc_peak_rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) if m else None


class _Stop:
    """SIGTERM as :class:`SystemExit`, held back while a child process is being started."""

    depth = 0
    pending: int | None = None


def _on_sigterm(signum: int, frame: object) -> None:
    if _Stop.depth:
        _Stop.pending = signum  # raised when the child is started and registered
        return
    raise SystemExit(128 + signum)


def install_stop_handler() -> None:
    """Make SIGTERM unwind the bench (its ``finally`` blocks stop what it started) instead of
    ending the process at once, which would leave its servers and peers running."""
    signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def _starting() -> Iterator[None]:
    """Around a ``Popen`` and its registration: a SIGTERM meanwhile takes effect after it, so
    no child is ever started that nobody will stop."""
    _Stop.depth += 1
    try:
        yield
    finally:
        _Stop.depth -= 1
        if not _Stop.depth and _Stop.pending is not None:
            signum, _Stop.pending = _Stop.pending, None
            raise SystemExit(128 + signum)


#: every :class:`Server` started and not yet stopped (see :func:`stop_all`)
_LIVE: set[Server] = set()
#: every measured tool (:func:`run_measured`) running now
_TOOLS: set[subprocess.Popen[bytes]] = set()


def _kill_tool(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_all() -> None:
    """Stop every server and measured tool still running: the bench's last ``finally``, after
    the scenarios' own clean-up, so that nothing outlives it even if it stopped between two
    steps (a SIGTERM right after a child was started, before its owner registered it)."""
    for proc in list(_TOOLS):
        _kill_tool(proc)
    for srv in list(_LIVE):
        with contextlib.suppress(Exception):
            srv.stop()


class Server:
    """A long-running child process (a server), its log in a file, stopped by :meth:`stop`."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        # the log may hold earlier servers' output: only what this one writes counts
        self._offset = self._out.tell()
        self._out.write(("$ " + " ".join(self.cmd) + "\n").encode())
        self._out.flush()
        with _starting():
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            _LIVE.add(self)

    def __repr__(self) -> str:
        return f"Server({self.name!r}, pid={self.proc.pid})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_output(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex); returns the match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                m = rx.search(f.read().decode(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                raise ToolFailed(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")
            if time.monotonic() > deadline:
                raise ToolFailed(
                    f"{self.name} did not print /{pattern}/ in {timeout:.0f} s:\n{tail(self.log)}"
                )
            time.sleep(0.05)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        try:
            wait_port(port, timeout, self.proc)
        except ToolFailed as exc:
            raise ToolFailed(f"{self.name}: {exc}\n{tail(self.log)}") from None

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def peak_rss_kib(self) -> int | None:
        return proc_peak_rss_kib(self.proc.pid)

    def stop(self) -> None:
        _LIVE.discard(self)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure_with_server(server: Server | None, fn: Callable[[], Run]) -> Run:
    """Run ``fn`` and attach the server's CPU seconds spent meanwhile and its peak RSS so far."""
    before = server.cpu_s() if server else 0.0
    run = fn()
    if server is not None:
        run.server_cpu_s = server.cpu_s() - before
        run.server_rss_kib = server.peak_rss_kib()
    return run


__all__ = [
    "Run",
    "Server",
    "ToolFailed",
    "free_port",
    "install_stop_handler",
    "measure_with_server",
    "proc_cpu_s",
    "proc_peak_rss_kib",
    "run_measured",
    "stop_all",
    "tail",
    "wait_port",
]
