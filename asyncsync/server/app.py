"""The aiohttp application: factory, middlewares, and the server runner.

* :func:`make_app` builds the application for one installation (:class:`Paths`);
  the access-control state is loaded in a worker thread when the app starts.
* :func:`serve` is an async context manager that binds a listening socket
  (TLS by default, certificate made on first start) and yields a
  :class:`ServerInfo` with the real port and fingerprint; :func:`run_server`
  runs until SIGTERM/SIGINT (or a given event) and then shuts down gracefully:
  the socket stops accepting, in-flight requests get
  :attr:`ServerOptions.shutdown_timeout` seconds to finish *and reach the
  client* (buffered response bytes included), the rest are cut.

Middlewares, outermost first: the error middleware turns every exception into
the JSON error envelope (an unexpected one into a 500 "internal error" whose
details only go to the server log); the auth middleware authenticates the
request (see :mod:`asyncsync.server.auth`). With
:attr:`ServerOptions.response_delay` > 0 (benchmarks, tests) the delay
middleware of :mod:`asyncsync.server.delay` runs outside them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from .. import protocol
from ..access import AccessControl
from ..config.paths import Paths
from ..errors import AsyncSyncError, InvalidInput, PermissionDenied
from ..tls import CertPaths, ensure_certificate, server_context
from . import auth, config_api, datastore_api, jobs_api
from .common import OPTIONS, READERS, ServerOptions, ok
from .delay import response_delay_middleware
from .keys import ACCESS, AUTH_ID, PATHS
from .readers import ReaderRegistry

log = logging.getLogger("asyncsync.server")


def _error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


_HTTP_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Every failure becomes ``{"error": {"code", "message"}}`` with a fitting status."""
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except AsyncSyncError as exc:
        if exc.status >= 500:
            # server-side failures may name local paths: the details go to the log only
            log.error("%s %s failed: %s", request.method, request.path, exc)
            summary = (type(exc).__doc__ or "internal error").strip().splitlines()[0]
            return _error_response(exc.status, exc.code, summary)
        return _error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        return _error_response(exc.status, code, exc.reason)
    except asyncio.CancelledError:
        raise
    except (ConnectionResetError, TimeoutError):
        # the client went away or stalled: nothing useful can be sent
        raise
    except Exception:
        log.exception("%s %s: internal error", request.method, request.path)
        return _error_response(500, "internal", "internal error")


async def _version(request: web.Request) -> web.Response:
    from .. import __version__

    return ok({"version": __version__, "api": 1})


def make_app(
    paths: Paths,
    *,
    options: ServerOptions | None = None,
    access: AccessControl | None = None,
) -> web.Application:
    """The application for ``paths``.

    ``access`` may be given (tests, embedding); otherwise it is loaded from the
    config folder in a worker thread when the app starts.
    """
    opts = options or ServerOptions()
    middlewares: list[Middleware] = [error_middleware, auth.auth_middleware]
    if opts.response_delay:
        # outermost, so that error answers (401, 404, ...) are held back like any other
        middlewares.insert(0, response_delay_middleware(opts.response_delay))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=opts.client_max_size,
    )
    app[PATHS] = paths
    app[OPTIONS] = opts
    app[READERS] = ReaderRegistry(opts.readers)
    if access is not None:
        app[ACCESS] = access
    auth.setup(app)

    async def load_access(app: web.Application) -> AsyncIterator[None]:
        if ACCESS not in app:
            app[ACCESS] = await asyncio.to_thread(AccessControl.load, paths)
        yield
        app[READERS].clear()

    app.cleanup_ctx.append(load_access)
    app.router.add_get(protocol.API_PREFIX + "/version", _version)
    datastore_api.setup(app)
    config_api.setup(app)
    jobs_api.setup(app, scheduler=opts.scheduler)
    return app


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Where a started server listens."""

    host: str
    port: int
    tls: bool
    fingerprint: str | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def describe(self) -> str:
        """The line ``asyncsync serve`` prints on start (tests parse it)."""
        line = f"listening on {self.url}"
        if self.fingerprint:
            line += f", fingerprint {self.fingerprint}"
        return line


class _AccessLogger(AbstractAccessLogger):
    """One line per request: client, auth-id, request line, status, bytes, seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        auth_id = request.get(AUTH_ID)
        self.logger.info(
            '%s %s "%s %s" %d %d %.3f',
            request.remote or "-",
            auth_id or "-",
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time,
        )


# ---- request-head deadline (slowloris) ------------------------------------------------
#
# aiohttp bounds the size of a request head but not the time it may take to arrive: a
# client that trickles header bytes holds its connection (and a file descriptor) for as
# long as the keep-alive timer allows. Each connection therefore gets one timer
# (``call_later``, no polling), armed when the connection is made and again at the first
# byte after a response, and cancelled as soon as the parser completes a request head.
# If it fires, the connection is closed without an answer. Body and handler time are
# bounded elsewhere (ServerOptions.body_timeout, write_timeout).


class _HeadDeadlineHandler(web.RequestHandler):
    """A :class:`web.RequestHandler` that closes its connection if a request head is late."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        #: a response is done and no further request is queued: the next byte starts a head
        self._between_requests = False

    def _arm(self) -> None:
        if self._header_timeout > 0 and self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("closing connection from %s: request headers not complete in time", peer)
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if data and self._between_requests:
            self._between_requests = False
            self._arm()
        # the parser counts every request head it completes (or rejects, answered with 400)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        # an idle keep-alive connection is the keep-alive timer's business; the head
        # deadline starts with the next request's first byte (unless one is queued already)
        self._between_requests = not self._messages
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class _HeadDeadlineServer(web.Server):
    """The app's :class:`web.Server`, making :class:`_HeadDeadlineHandler` connections.

    It also completes aiohttp's graceful shutdown. aiohttp waits for running handlers, then
    closes every transport and returns; but a handler is done once its last write is
    *buffered* (a TLS file response hands up to a whole blob to the transport at once), and
    a closing transport sends that backlog only while the loop still runs. Exiting right
    after aiohttp's shutdown cut such responses short, though the server had logged them as
    sent. :meth:`shutdown` therefore also waits for every transport to finish closing,
    within what is left of the shutdown timeout, and aborts those that do not.
    """

    def __init__(self, base: web.Server, header_timeout: float) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._header_timeout = header_timeout
        #: every connection until its transport is really closed (aiohttp forgets it earlier)
        self._open: dict[web.RequestHandler, asyncio.Transport] = {}
        self._all_closed: asyncio.Event | None = None

    def __call__(self) -> web.RequestHandler:
        return _HeadDeadlineHandler(
            self, header_timeout=self._header_timeout, loop=self._loop, **self._kwargs
        )

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._open[handler] = transport

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._open.pop(handler, None)
        if not self._open and self._all_closed is not None:
            self._all_closed.set()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp signature
        """aiohttp's shutdown, then wait for the closing transports to flush (same deadline)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await super().shutdown(timeout)
        if not self._open:
            return
        self._all_closed = asyncio.Event()
        try:
            async with asyncio.timeout_at(deadline):
                await self._all_closed.wait()
        except TimeoutError:
            # the promise: what does not finish within the timeout is cut
            for transport in list(self._open.values()):
                transport.abort()


class _Runner(web.AppRunner):
    """An :class:`web.AppRunner` whose connections have a request-head deadline."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        # AppRunner builds the server (and starts the app); only the handler class changes
        return _HeadDeadlineServer(await super()._make_server(), self._header_timeout)


#: ``--listen`` default: all interfaces (IPv6 and IPv4), the Proxmox port
DEFAULT_LISTEN = f":{protocol.DEFAULT_PORT}"


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``ADDR:PORT``, ``[IPv6]:PORT``, ``:PORT`` (all interfaces) or ``ADDR`` (port 8007).

    All interfaces is returned as host ``""``.
    """
    v = value.strip()
    host, port_s = v, ""
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or (v[end + 1 :] and not v[end + 1 :].startswith(":")):
            raise InvalidInput(f"invalid listen address {value!r}", field="listen")
        host, port_s = v[1:end], v[end + 2 :]
    elif v.count(":") == 1:
        host, port_s = v.split(":")
    elif v.count(":") > 1:
        raise InvalidInput(f"write an IPv6 listen address in brackets: [{v}]:PORT", field="listen")
    if not port_s:
        port = protocol.DEFAULT_PORT
    elif port_s.isdigit() and int(port_s) <= 65535:
        port = int(port_s)
    else:
        raise InvalidInput(f"invalid port in listen address {value!r}", field="listen")
    return host, port


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; host ``""`` is every interface (IPv6 and IPv4)."""
    if not host:
        try:
            return _bind("::", port)
        except InvalidInput:
            return _bind("0.0.0.0", port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve listen address {host!r}: {exc}", field="listen") from exc
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(512)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if isinstance(exc, PermissionError):
            raise PermissionDenied(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}", field="listen") from exc
    return sock


@contextlib.asynccontextmanager
async def serve(
    paths: Paths,
    host: str,
    port: int,
    *,
    tls: bool = True,
    cert: CertPaths | None = None,
    options: ServerOptions | None = None,
    access: AccessControl | None = None,
    app: web.Application | None = None,
) -> AsyncIterator[ServerInfo]:
    """Start the server on ``host:port`` (port 0: any free port; host "": every interface).

    Yields where it listens.

    With ``tls`` the certificate at ``cert`` (default: ``proxy.pem``/``proxy.key``
    in the config folder, made on first start) is used. Leaving the block shuts
    the server down gracefully.
    """
    opts = options or ServerOptions()
    application = app or make_app(paths, options=opts, access=access)
    ssl_ctx = None
    fingerprint = None
    if tls:
        target = cert or CertPaths.default(paths)
        info = await asyncio.to_thread(ensure_certificate, target)
        ssl_ctx = await asyncio.to_thread(server_context, target)
        fingerprint = info.fingerprint
    access_log = logging.getLogger("asyncsync.access") if opts.access_log else None
    runner = _Runner(
        application,
        header_timeout=opts.header_timeout,
        access_log=access_log,
        access_log_class=_AccessLogger,
        shutdown_timeout=opts.shutdown_timeout,
        keepalive_timeout=opts.keepalive_timeout,
        max_line_size=opts.max_line_size,
        max_field_size=opts.max_field_size,
        max_headers=opts.max_headers,
        handle_signals=False,
    )
    await runner.setup()
    try:
        sock = await asyncio.to_thread(_bind, host, port)
        site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
        await site.start()
        bound = sock.getsockname()
        yield ServerInfo(str(bound[0]), int(bound[1]), tls, fingerprint)
    finally:
        await runner.cleanup()


async def run_server(
    paths: Paths,
    host: str,
    port: int,
    *,
    tls: bool = True,
    ready: Callable[[ServerInfo], None] | None = None,
    cert: CertPaths | None = None,
    options: ServerOptions | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or until ``stop`` is set), then shut down gracefully.

    ``ready`` is called once the socket listens, with its :class:`ServerInfo`.
    Signal handlers are installed only when ``stop`` is not given.
    """
    event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
    try:
        async with serve(paths, host, port, tls=tls, cert=cert, options=options) as info:
            if ready is not None:
                ready(info)
            await event.wait()
            log.info("shutting down")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


__all__ = [
    "DEFAULT_LISTEN",
    "ServerInfo",
    "ServerOptions",
    "error_middleware",
    "make_app",
    "parse_listen",
    "run_server",
    "serve",
]
