"""``asyncsync serve --response-delay``: the duration parser, the middleware on a real TLS server, the CLI."""
# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverutil import TEST_OPTIONS, Installation, http_pull, remote, running_server  # noqa: F401

from asyncsync import protocol
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import InvalidInput
from asyncsync.fingerprint import parse_fingerprint
from asyncsync.server import delay
from asyncsync.server.app import make_app
from asyncsync.sync import fetch
from asyncsync.sync.adaptive import AdaptiveLimit
from asyncsync.units import parse_duration

DELAY = 0.025

# ---- the duration parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("25ms", 0.025),
        ("25MS", 0.025),
        ("0", 0.0),
        ("90", 90.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("2min", 120.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (" 1m 500ms ", 60.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "nonsense", "-1", "25 ms x", "1e3", "ms", "5y", "25msec"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^response-delay: "):
        parse_duration(text, field="response-delay")


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=999))
def test_parse_duration_terms_add_up(seconds: int, millis: int) -> None:
    assert parse_duration(f"{seconds}s{millis}ms") == pytest.approx(seconds + millis / 1000)
    assert parse_duration(f"{millis}ms") == pytest.approx(millis / 1000)


@given(st.text(max_size=12))
def test_parse_duration_never_crashes(text: str) -> None:
    try:
        value = parse_duration(text)
    except InvalidInput:
        return
    assert value >= 0


@pytest.mark.parametrize("bad", [-0.001, 10.001, float("nan"), float("inf")])
def test_check_response_delay_bounds(bad: float) -> None:
    with pytest.raises(InvalidInput, match="response-delay"):
        delay.check_response_delay(bad)
    with pytest.raises(InvalidInput):
        make_app(
            Paths(Path("/nonexistent/etc"), Path("/nonexistent/state")),
            options=replace(TEST_OPTIONS, response_delay=bad),
        )


def test_check_response_delay_accepts_the_range() -> None:
    assert delay.check_response_delay(0.0) == 0.0
    assert delay.check_response_delay(delay.MAX_RESPONSE_DELAY) == delay.MAX_RESPONSE_DELAY


def _delay_middlewares(app: aiohttp.web.Application) -> list[object]:
    return [m for m in app.middlewares if getattr(m, "__module__", None) == delay.__name__]


def test_middleware_is_installed_only_with_a_delay(paths: Paths) -> None:
    off = make_app(paths, options=TEST_OPTIONS)
    assert _delay_middlewares(off) == []
    on = make_app(paths, options=replace(TEST_OPTIONS, response_delay=DELAY))
    # one more middleware than without, and it is the outermost one
    assert len(on.middlewares) == len(off.middlewares) + 1
    assert _delay_middlewares(on) == [on.middlewares[0]]


# ---- on a real server ----------------------------------------------------------------------------


class Recorder:
    """Stands in for the middleware's sleep; logs ``("sleep", s)`` and ``("response", status)`` in order.

    While :attr:`gate` is clear a sleeping request waits for it (the test decides when the
    "link latency" has passed), so nothing here depends on real time.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))
        self.sleeping.set()
        await self.gate.wait()

    async def on_prepare(self, request: aiohttp.web.Request, response: aiohttp.web.StreamResponse) -> None:
        self.events.append(("response", response.status))

    def sleeps(self) -> list[object]:
        return [v for k, v in self.events if k == "sleep"]

    def responses(self) -> list[object]:
        return [v for k, v in self.events if k == "response"]


def _session(port: int, fingerprint: str | None) -> aiohttp.ClientSession:
    assert fingerprint is not None
    conn = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(parse_fingerprint(fingerprint)))
    return aiohttp.ClientSession(base_url=f"https://127.0.0.1:{port}", connector=conn)


def _token(inst: Installation) -> dict[str, str]:
    return {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{inst.sync_token}:{inst.sync_secret}"}


async def test_each_request_awaits_the_delay_once_before_its_handler(
    remote: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    monkeypatch.setattr(delay, "_sleep", rec.sleep)
    app = make_app(remote.paths, options=replace(TEST_OPTIONS, response_delay=DELAY))
    app.on_response_prepare.append(rec.on_prepare)
    async with running_server(remote.paths, app=app) as srv, _session(srv.port, srv.fingerprint) as s:
        # one at a time: a JSON answer, an unauthenticated 401, a 404 from the router
        for path, headers, status in [
            ("/version", _token(remote), 200),
            ("/version", {}, 401),
            ("/no-such-route", _token(remote), 404),
        ]:
            async with s.get(protocol.API_PREFIX + path, headers=headers) as resp:
                assert resp.status == status
                await resp.read()
        assert rec.events == [
            ("sleep", DELAY),
            ("response", 200),
            ("sleep", DELAY),
            ("response", 401),
            ("sleep", DELAY),
            ("response", 404),
        ]

        # the answer is held back until the delay has passed: nothing is sent while it sleeps
        rec.events.clear()
        rec.gate.clear()
        rec.sleeping.clear()
        async with asyncio.TaskGroup() as tg:
            req = tg.create_task(s.get(protocol.API_PREFIX + "/version", headers=_token(remote)))
            await rec.sleeping.wait()
            assert rec.events == [("sleep", DELAY)] and not req.done()
            rec.gate.set()
        async with req.result() as resp:
            assert resp.status == 200
        assert rec.events == [("sleep", DELAY), ("response", 200)]


async def test_a_pull_through_a_delayed_server_pays_once_per_request(
    remote: Installation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent requests, streamed file and chunk bodies: one delay per response, every one."""
    rec = Recorder()
    monkeypatch.setattr(delay, "_sleep", rec.sleep)
    app = make_app(remote.paths, options=replace(TEST_OPTIONS, response_delay=DELAY))
    app.on_response_prepare.append(rec.on_prepare)
    dst = await asyncio.to_thread(Datastore.create, tmp_path / "dst", "dst", SyncLevel.NONE)
    async with running_server(remote.paths, app=app) as srv:
        report = await http_pull(srv, remote, dst)
    assert report.chunks_downloaded > 0
    responses = rec.responses()
    # login, listings, reader, manifests, indexes, chunks: several requests, each delayed once
    assert len(responses) > 5
    assert rec.sleeps() == [DELAY] * len(responses)


async def test_threaded_transfers_report_the_delay_to_the_adaptive_limit(
    remote: Installation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each threaded transfer tells :class:`AdaptiveLimit` how long it waited for its first byte
    and how long it took: with a real 50 ms server delay, every wait is at least that."""
    real_delay = 0.05
    timings: list[tuple[int, float | None, float | None]] = []

    class Recording(AdaptiveLimit):
        def release(self, nbytes: int, wait: float | None = None, duration: float | None = None) -> None:
            timings.append((nbytes, wait, duration))
            super().release(nbytes, wait, duration)

    monkeypatch.setattr(fetch, "AdaptiveLimit", Recording)
    app = make_app(remote.paths, options=replace(TEST_OPTIONS, response_delay=real_delay))
    dst = await asyncio.to_thread(Datastore.create, tmp_path / "dst", "dst", SyncLevel.NONE)
    async with running_server(remote.paths, app=app) as srv:
        report = await http_pull(srv, remote, dst)
    assert report.chunks_downloaded > 0
    timed = [(n, w, d) for n, w, d in timings if w is not None]
    assert timed, timings  # the transfers were threaded and timed
    # every transfer that moved bytes was timed
    assert sum(n for n, _, _ in timed) == sum(n for n, _, _ in timings) > 0
    for _, wait, duration in timed:
        assert duration is not None
        assert real_delay <= wait <= duration


async def test_without_the_option_nothing_sleeps(
    remote: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    monkeypatch.setattr(delay, "_sleep", rec.sleep)
    app = make_app(remote.paths, options=TEST_OPTIONS)
    app.on_response_prepare.append(rec.on_prepare)
    assert _delay_middlewares(app) == []
    async with (
        running_server(remote.paths, app=app) as srv,
        _session(srv.port, srv.fingerprint) as s,
        s.get(protocol.API_PREFIX + "/version", headers=_token(remote)) as resp,
    ):
        assert resp.status == 200
    assert rec.events == [("response", 200)]


async def test_injected_sleep_parameter_is_used() -> None:
    """The factory's ``sleep`` argument (for embedding) wins over the module default."""
    seen: list[float] = []

    async def sleep(seconds: float) -> None:
        seen.append(seconds)

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        seen.append(-1.0)
        return aiohttp.web.Response(text="ok")

    mw = delay.response_delay_middleware(0.5, sleep=sleep)
    resp = await mw(None, handler)  # type: ignore[arg-type]  # the middleware never looks at the request
    assert isinstance(resp, aiohttp.web.Response) and seen == [0.5, -1.0]
    with pytest.raises(InvalidInput):
        delay.response_delay_middleware(0.0)


# ---- the CLI ------------------------------------------------------------------------------------


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", "serve", "--listen", "127.0.0.1:0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nonsense", "invalid duration 'nonsense'"),
        ("11s", "at most 10 s"),
        ("-5ms", "invalid duration '-5ms'"),
    ],
)
def test_serve_rejects_a_bad_response_delay(cli_env: dict[str, str], value: str, message: str) -> None:
    out = _serve(cli_env, "--response-delay", value)
    assert out.returncode == 2, out.stderr
    assert "Invalid value for '--response-delay'" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stdout


def test_serve_help_documents_the_option(cli_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "asyncsync", "serve", "--help"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--response-delay DURATION" in text and "benchmarks and tests" in text
