"""Which event loop a service runs on: ``EVENT_LOOP``.

``uvloop`` (libuv's loop, a drop-in for asyncio's) where it is installed, which is the
default on Linux and macOS: the services spend much of their time in the loop itself (a
Redis round trip, an HTTP request or a provider's chunk each cost several loop turns and
a socket call), and uvloop's turns and sockets are cheaper. On the chat benchmark
(``tests/bench/README.md``) it cut the API's and the worker's CPU per call by 5-15 % and
the latency they add by about a quarter. ``asyncio`` runs the standard loop (what the
in-process tests use); ``auto``, the default, picks uvloop when it can be imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Literal, TypeVar

from .env import Env

__all__ = ["EVENT_LOOPS", "loop_name", "run"]

_T = TypeVar("_T")

EventLoop = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOPS: Final[tuple[EventLoop, ...]] = ("auto", "uvloop", "asyncio")


def _factory(environ: Mapping[str, str]) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory ``EVENT_LOOP`` asks for (None: asyncio's default); a
    ``ConfigError`` for an unknown value, or for ``uvloop`` where it is not installed."""
    env = Env(environ)
    wanted = env.choice("EVENT_LOOP", "auto", EVENT_LOOPS)
    if wanted == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise env.fail("EVENT_LOOP", "uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, _T], environ: Mapping[str, str]) -> _T:
    """Run ``main`` to its end on the loop ``EVENT_LOOP`` names, as ``asyncio.run`` does.
    Raises ``ConfigError`` (before anything runs) for a bad ``EVENT_LOOP``."""
    try:
        factory = _factory(environ)
    except BaseException:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The running loop's kind, for start-up logs: ``uvloop`` or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
