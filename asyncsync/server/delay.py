"""An artificial response delay, for benchmarks and tests (``asyncsync serve --response-delay``).

:func:`response_delay_middleware` holds every request back by a fixed delay
before its handler runs, so each request/response round trip costs the delay
once, like a link with that much added latency: small JSON answers and
streamed bodies (files, chunk batches) alike, and error answers too (it is the
outermost middleware). Bandwidth is not limited, and requests on different
connections wait concurrently, as they would on a real link.

It replaces a delaying TCP proxy in the benchmark: such a proxy is one more
process copying every byte on the same cores, so its CPU, not the latency,
bounded the measurement.

:func:`asyncsync.server.app.make_app` installs the middleware only when
:attr:`~asyncsync.server.common.ServerOptions.response_delay` is > 0; a server
without the option has no trace of it in its request path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import InvalidInput

#: the largest delay accepted: beyond it clients time out rather than see latency
MAX_RESPONSE_DELAY = 10.0

#: what the middleware awaits; a test may inject its own (see :func:`response_delay_middleware`)
Sleep = Callable[[float], Awaitable[None]]


async def _sleep(seconds: float) -> None:
    """The default :data:`Sleep`. Looked up at call time, so a test may monkeypatch this module's name."""
    await asyncio.sleep(seconds)


def check_response_delay(seconds: float, *, field: str = "response-delay") -> float:
    """``seconds`` if it is a usable delay (0 = off, at most :data:`MAX_RESPONSE_DELAY`).

    Raises :class:`InvalidInput` naming ``field`` otherwise (negative, NaN, infinite, too long).
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"must be a non-negative duration, not {seconds!r}", field=field)
    if seconds > MAX_RESPONSE_DELAY:
        raise InvalidInput(
            f"{seconds:g} s is too long (at most {MAX_RESPONSE_DELAY:g} s: it models link latency)",
            field=field,
        )
    return seconds


def response_delay_middleware(seconds: float, *, sleep: Sleep | None = None) -> Middleware:
    """A middleware that awaits ``seconds`` once per request, before the rest of the chain runs.

    ``seconds`` must be > 0 and within :func:`check_response_delay`'s bound (an
    :class:`InvalidInput` otherwise: a zero delay means *no* middleware). ``sleep``
    replaces the module's :func:`_sleep` (tests record the awaited delays with it).
    A request whose client goes away while it waits is cancelled like any other.
    """
    check_response_delay(seconds)
    if seconds == 0:
        raise InvalidInput("a zero response delay installs no middleware", field="response-delay")

    @web.middleware
    async def response_delay(request: web.Request, handler: Handler) -> web.StreamResponse:
        # module global looked up per call (not bound at definition) so that tests can replace it
        await (sleep or _sleep)(seconds)
        return await handler(request)

    return response_delay


__all__ = ["MAX_RESPONSE_DELAY", "Sleep", "check_response_delay", "response_delay_middleware"]
