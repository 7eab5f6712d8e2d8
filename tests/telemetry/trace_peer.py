"""A tiny producer or consumer process for the cross-process tracing test.

    python tests/telemetry/trace_peer.py produce <redis_url> <stream>
    python tests/telemetry/trace_peer.py consume <redis_url> <stream> <group> <results_stream>

Telemetry is configured from the environment exactly as a service does it (``APP_ID``,
``JAEGER_URI``, ``LOG_FORMAT``...). The consumer handles one delivery the way the worker does:
activate its span, make a child span, publish a result, ack. Each prints one JSON line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import orjson

from orchestrator_broker import ConsumeOptions, Message
from orchestrator_broker.redis_streams import RedisStreamsBroker
from orchestrator_telemetry import (
    LoggingSettings,
    Telemetry,
    TelemetrySettings,
    TracingBroker,
    current_trace_id,
    setup_telemetry,
)

log = logging.getLogger("trace_peer")


async def produce(
    telemetry: Telemetry, broker: TracingBroker, stream: str
) -> dict[str, str | None]:
    with telemetry.tracer("trace_peer").start_as_current_span("submit task"):
        message = Message(payload={"prompt": "hello"})
        entry_id = await broker.publish(stream, message)
        log.info("published", extra={"entry_id": entry_id})
        return {"message_id": message.id, "entry_id": entry_id, "trace_id": current_trace_id()}


async def consume(
    telemetry: Telemetry, broker: TracingBroker, stream: str, group: str, results: str
) -> dict[str, str | None]:
    await broker.ensure_group(stream, group)
    deliveries = broker.consume(stream, group, "peer-1", ConsumeOptions(block=0.2))
    try:
        delivery = await asyncio.wait_for(anext(deliveries), timeout=30)
    finally:
        await deliveries.aclose()
    with delivery.activate():
        log.info("processing")
        with telemetry.tracer("trace_peer").start_as_current_span("provider call"):
            await asyncio.sleep(0.01)
        await broker.publish(results, Message(payload={"text": "hi"}))
        trace_id = current_trace_id()
    await delivery.ack()
    return {"message_id": delivery.message.id, "trace_id": trace_id}


async def main(telemetry: Telemetry, argv: list[str]) -> None:
    role, url, stream, *rest = argv
    broker = TracingBroker(
        RedisStreamsBroker.from_url(url), tracer_provider=telemetry.tracer_provider
    )
    try:
        await broker.ensure_group(stream, "workers")
        if role == "produce":
            result = await produce(telemetry, broker, stream)
        else:
            group, results = rest
            result = await consume(telemetry, broker, stream, group, results)
    finally:
        await broker.close()
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    LoggingSettings.from_env(os.environ).apply()
    telemetry = setup_telemetry(TelemetrySettings.from_env(os.environ))
    log.info("traces: %s", telemetry.settings.endpoint_for_log)
    try:
        asyncio.run(main(telemetry, sys.argv[1:]))
    finally:
        telemetry.shutdown()
