"""Serving a ``CollectorRegistry`` over HTTP: a ``GET /metrics`` handler and a tiny server.

The handler awaits the registry's async refreshes (``metrics.add_refresh``: the queue gauges
read the broker), then answers with prometheus_client's aiohttp exposition, which picks the
format from the scraper's ``Accept`` header (``choose_encoder``): OpenMetrics, with exemplars,
when asked for it, as Prometheus does, else the Prometheus 0.0.4 text format. The server is
for processes without an HTTP app of their own (the worker): one aiohttp site with that single
route, on the caller's event loop (not prometheus_client's thread-based server).
"""

from __future__ import annotations

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import refresh

__all__ = ["MetricsServer", "metrics_handler", "start_metrics_server"]


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """An aiohttp handler serving ``registry`` (for ``router.add_get("/metrics", ...)``)."""
    expose = make_aiohttp_handler(registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        await refresh(registry)
        return await expose(request)

    return metrics


@attrs.frozen
class MetricsServer:
    """A running metrics endpoint; ``url`` is where it answers, ``close()`` stops it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``GET /metrics`` on ``host:port`` (port 0 picks a free one) until ``close()``.

    Raises ``OSError`` when the address cannot be bound (port taken, host not local).
    """
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry), allow_head=False)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    return MetricsServer(runner, host, bound_port)
