"""``asyncsync datastore …`` through the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asyncsync.config.paths import Paths


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_datastore_lifecycle(cli_env: dict[str, str], paths: Paths, tmp_path: Path) -> None:
    r = cli(cli_env, "datastore", "create", "main", str(tmp_path / "main"), "--comment", "first store")
    assert r.returncode == 0, r.stderr
    assert "created datastore main" in r.stdout
    assert (tmp_path / "main" / ".asyncsync-datastore").is_file()
    assert (tmp_path / "main" / ".chunks").is_dir()
    cfg = (paths.config / "datastore.cfg").read_text()
    assert cfg.startswith("datastore: main\n\tpath ")
    assert "\tsync-level filesystem\n" in cfg and "\tcomment first store\n" in cfg

    r = cli(cli_env, "datastore", "create", "other", str(tmp_path / "other"), "--sync-level", "none")
    assert r.returncode == 0, r.stderr

    items = json.loads(cli(cli_env, "datastore", "list", "--output-format", "json").stdout)
    assert [(d["name"], d["sync-level"]) for d in items] == [("main", "filesystem"), ("other", "none")]
    assert items[0]["path"] == str(tmp_path / "main")
    pretty = cli(cli_env, "datastore", "list", "--output-format", "json-pretty").stdout
    assert json.loads(pretty) == items and "\n  " in pretty
    text = cli(cli_env, "datastore", "list").stdout
    assert "main" in text and "first store" in text and "│" in text

    shown = json.loads(cli(cli_env, "datastore", "show", "main", "--output-format", "json").stdout)
    digest = shown.pop("digest")
    assert shown == items[0]
    # the digest shown is what update --digest accepts; a stale one is refused
    r = cli(cli_env, "datastore", "update", "main", "--comment", "x", "--digest", digest)
    assert r.returncode == 0, r.stderr
    r = cli(cli_env, "datastore", "update", "main", "--comment", "y", "--digest", digest)
    assert r.returncode == 5 and "digest" in r.stderr
    cli(cli_env, "datastore", "update", "main", "--comment", "first store")

    # remove unregisters but keeps the data
    r = cli(cli_env, "datastore", "remove", "main")
    assert r.returncode == 0 and "data kept" in r.stdout
    assert (tmp_path / "main" / ".asyncsync-datastore").is_file()
    # ... so it can be registered again, adopting the existing datastore
    r = cli(cli_env, "datastore", "create", "main", str(tmp_path / "main"))
    assert r.returncode == 0, r.stderr

    r = cli(cli_env, "datastore", "remove", "other", "--destroy-data")
    assert r.returncode == 0 and "deleted" in r.stdout
    assert not (tmp_path / "other").exists()
    names = [
        d["name"] for d in json.loads(cli(cli_env, "datastore", "list", "--output-format", "json").stdout)
    ]
    assert names == ["main"]


def test_datastore_errors_are_one_line(cli_env: dict[str, str], paths: Paths, tmp_path: Path) -> None:
    assert cli(cli_env, "datastore", "create", "s", str(tmp_path / "s")).returncode == 0
    before = (paths.config / "datastore.cfg").read_bytes()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    cases = [
        (["datastore", "create", "../evil", str(tmp_path / "e")], 2, "invalid datastore name"),
        (["datastore", "create", ".hidden", str(tmp_path / "e")], 2, "invalid datastore name"),
        (["datastore", "create", "a/b", str(tmp_path / "e")], 2, "invalid datastore name"),
        (["datastore", "create", "s", str(tmp_path / "s2")], 5, "already exists"),
        (["datastore", "create", "t", str(tmp_path / "full")], 2, "not empty"),
        (["datastore", "show", "missing"], 3, "not configured"),
        (["datastore", "show", "../x"], 2, "invalid datastore name"),
        (["datastore", "remove", "missing"], 3, "not configured"),
        (["backup", "--store", "missing", "vm/1", f"r.didx={tmp_path}"], 3, "not configured"),
    ]
    for args, code, message in cases:
        r = cli(cli_env, *args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
    # nothing changed
    assert (paths.config / "datastore.cfg").read_bytes() == before
    assert not (tmp_path / "e").exists()
    assert (tmp_path / "full" / "file").exists()


def test_config_dir_option_and_usage_errors(tmp_path: Path, cli_env: dict[str, str]) -> None:
    other = tmp_path / "other-etc"
    r = cli(cli_env, "--config-dir", str(other), "datastore", "create", "x", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    assert (other / "datastore.cfg").is_file()
    r = cli(cli_env, "datastore", "create")
    assert r.returncode == 2 and "Missing argument" in r.stderr
    r = cli(cli_env, "datastore", "create", "y", str(tmp_path / "y"), "--sync-level", "sometimes")
    assert r.returncode == 2 and "sync-level" in r.stderr
