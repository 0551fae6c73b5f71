"""The CLI frame: lazy command table in step with the modules, help, error mapping."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from asyncsync.cli.main import COMMAND_MODULES, LAZY_COMMANDS, cli


def test_lazy_table_matches_module_commands() -> None:
    defined: dict[str, str] = {}
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"asyncsync.cli.{name}")
        for cmd in mod.commands:
            assert cmd.name is not None
            defined[cmd.name] = name
    assert set(defined) == set(LAZY_COMMANDS)
    for cmd_name, module in defined.items():
        assert LAZY_COMMANDS[cmd_name][0] == module


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for name in LAZY_COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_sync_job_run_is_registered() -> None:
    result = CliRunner().invoke(cli, ["sync-job", "--help"])
    assert result.exit_code == 0
    assert "run" in result.output.split("Commands:")[1]


def test_library_error_is_one_line_with_exit_code(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", "--config-dir", str(tmp_path), "datastore", "show", "../x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unusable_config_folder_is_one_line_not_a_traceback(tmp_path: object) -> None:
    # /proc refuses new folders: the config layer must say so, not crash
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncsync",
            "--config-dir",
            "/proc/asyncsync-nope",
            "datastore",
            "create",
            "x",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot lock /proc/asyncsync-nope/datastore.cfg")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
