"""Serving a metrics ``Registry`` over HTTP: a ``GET /metrics`` handler and a tiny server.

The handler runs the registry's collectors, then answers in OpenMetrics (with exemplars)
when the scraper's ``Accept`` header asks for it, as Prometheus does, else in the Prometheus
0.0.4 text format. The server is for processes without an HTTP app of their own (the
worker): one aiohttp site with that single route, on the caller's event loop.
"""

from __future__ import annotations

import logging

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from .metrics import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_PROMETHEUS,
    Registry,
    wants_openmetrics,
)

__all__ = ["MetricsServer", "metrics_handler", "start_metrics_server"]

log = logging.getLogger(__name__)


def metrics_handler(registry: Registry) -> Handler:
    """An aiohttp handler serving ``registry`` (for ``router.add_get("/metrics", ...)``)."""

    async def metrics(request: web.Request) -> web.Response:
        await registry.collect()
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        response = web.Response(body=registry.expose(openmetrics=openmetrics))
        # Set whole: aiohttp's content_type= would drop the version parameter.
        response.headers["Content-Type"] = (
            CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_PROMETHEUS
        )
        return response

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


async def start_metrics_server(registry: Registry, host: str, port: int) -> MetricsServer:
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
