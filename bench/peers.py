"""The peers asyncsync is compared with: an rsync daemon and rclone ``serve http``, on 127.0.0.1.

Both sync the source datastore's folder as plain files. They are installed with
apt-get when missing and the bench runs as root (never in ``--smoke``);
otherwise they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .procs import Run, Server, free_port, measure_with_server, run_measured

PACKAGES = {"rsync": "rsync", "rclone": "rclone"}


def ensure_tools(names: list[str], *, install: bool, log: object = print) -> dict[str, str | None]:
    """{tool: None if usable, else the reason it is skipped}; installs missing ones if allowed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing and install:
        if os.geteuid() != 0:
            return {
                n: (
                    f"{n} is not installed (run as root to let the bench apt-get install it)"
                    if n in missing
                    else None
                )
                for n in names
            }
        print(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *[PACKAGES[n] for n in missing]],
            env=env,
            check=False,
            capture_output=True,
        )
    out: dict[str, str | None] = {}
    for n in names:
        if shutil.which(n) is not None:
            out[n] = None
        elif install:
            out[n] = f"{n} is not installed and apt-get install {PACKAGES[n]} failed"
        else:
            out[n] = f"{n} is not installed (the smoke run does not install peers)"
    return out


def tool_version(name: str) -> str:
    try:
        out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].strip() if out else "?"


class RsyncDaemon:
    """``rsync --daemon`` serving ``root`` read-only as module ``src`` on a loopback port."""

    def __init__(self, root: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = workdir / "rsyncd.conf"
        ident = "uid = root\ngid = root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"pid file = {workdir / 'rsyncd.pid'}\n"
            f"lock file = {workdir / 'rsyncd.lock'}\n"
            f"log file = {workdir / 'rsyncd.log'}\n"
            "use chroot = false\n"
            f"{ident}"
            "[src]\n"
            f"path = {root}\n"
            "read only = true\n"
        )
        self.server = Server(
            "rsync daemon",
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={conf}",
                f"--port={self.port}",
                "--address=127.0.0.1",
            ],
            log=workdir / "rsyncd.out",
        )
        self.server.wait_port(self.port)
        self.url = f"rsync://127.0.0.1:{self.port}/src/"

    def sync(self, target: Path, log: Path) -> Run:
        """``rsync -aW`` the whole module into ``target`` (created if missing)."""
        target.mkdir(parents=True, exist_ok=True)
        return measure_with_server(
            self.server, lambda: run_measured(["rsync", "-aW", self.url, f"{target}/"], log=log)
        )

    def stop(self) -> None:
        self.server.stop()


class RcloneHttp:
    """``rclone serve http`` of ``root`` on a loopback port, plain or with a self-signed certificate."""

    def __init__(self, root: Path, workdir: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls is not None
        self.env = {**os.environ, "RCLONE_CONFIG": str(workdir / "rclone.conf")}
        (workdir / "rclone.conf").touch()
        cmd = ["rclone", "serve", "http", str(root), "--addr", f"127.0.0.1:{self.port}", "--read-only"]
        if tls is not None:
            cmd += ["--cert", str(tls[0]), "--key", str(tls[1])]
        self.server = Server(
            f"rclone serve http{'s' if self.tls else ''}",
            cmd,
            log=workdir / f"rclone-serve-{'https' if self.tls else 'http'}.out",
            env=self.env,
        )
        self.server.wait_port(self.port)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    def copy(self, target: Path, log: Path, *, transfers: int = 8) -> Run:
        """``rclone copy --transfers N`` from the server into ``target``."""
        cmd = ["rclone", "copy", "--transfers", str(transfers), "--http-url", self.url, ":http:", str(target)]
        if self.tls:
            cmd.append("--no-check-certificate")
        return measure_with_server(self.server, lambda: run_measured(cmd, log=log, env=self.env))

    def stop(self) -> None:
        self.server.stop()


__all__ = ["RcloneHttp", "RsyncDaemon", "ensure_tools", "tool_version"]
