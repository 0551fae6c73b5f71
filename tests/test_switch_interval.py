"""The short GIL switch interval of transfer processes (:mod:`asyncsync.sync.threads`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from asyncsync.cli.common import run_async
from asyncsync.runner import run
from asyncsync.sync.threads import TRANSFER_SWITCH_INTERVAL, transfer_switch_interval

DEFAULT = 0.005


@pytest.fixture(autouse=True)
def default_interval() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT)
    yield
    sys.setswitchinterval(previous)


def test_the_interval_is_set_for_the_block_and_restored() -> None:
    assert TRANSFER_SWITCH_INTERVAL < DEFAULT
    with transfer_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(TRANSFER_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


def test_the_interval_is_restored_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), transfer_switch_interval(0.001):
        assert sys.getswitchinterval() == pytest.approx(0.001)
        raise RuntimeError("boom")
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)


def test_commands_run_at_the_transfer_interval_unless_told_not_to() -> None:
    async def seen() -> float:
        return sys.getswitchinterval()

    assert run_async(seen) == pytest.approx(TRANSFER_SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(DEFAULT)
    assert run_async(seen, transfer=False) == pytest.approx(DEFAULT)
    assert run(seen) == pytest.approx(TRANSFER_SWITCH_INTERVAL)  # what bench.pullproc calls


def test_serve_opts_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``asyncsync serve`` keeps Python's default interval (only the client side was measured)."""
    import asyncsync.cli.serve as serve_cli

    calls: list[dict[str, object]] = []

    def record(factory: object, **kwargs: object) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(serve_cli, "run_async", record)
    monkeypatch.setenv("ASYNCSYNC_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("ASYNCSYNC_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(serve_cli.serve, ["--listen", "127.0.0.1:0", "--no-access-log"])
    assert result.exit_code == 0, result.output
    assert calls == [{"transfer": False}]
