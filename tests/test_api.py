"""The public face: every name in ``asyncsync.__all__`` resolves, lazily where it should."""

from __future__ import annotations

import subprocess
import sys

import asyncsync


def test_every_public_name_resolves() -> None:
    for name in asyncsync.__all__:
        assert getattr(asyncsync, name) is not None, name
    assert callable(asyncsync.pull)
    assert asyncsync.PullOptions().fetch_workers >= 1


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        asyncsync.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_the_http_stack() -> None:
    code = "import sys, asyncsync; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
