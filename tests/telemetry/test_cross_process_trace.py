"""One trace across two processes and Redis, exported to a real OTLP/HTTP endpoint.

A producer process publishes a task, a consumer process handles it and publishes a result;
both export to an in-process OTLP receiver named by ``JAEGER_URI``, as the services do.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

pytest.importorskip("orchestrator_broker.redis_streams")

PEER = Path(__file__).with_name("trace_peer.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.redis


async def run_peer(env: dict[str, str], *args: str) -> tuple[dict[str, str], str]:
    """Run ``trace_peer.py`` to completion; returns its JSON result and its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()
    return orjson.loads(out.splitlines()[-1]), err.decode()


def peer_env(receiver: OtlpReceiver, app_id: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        APP_ID=app_id,
        JAEGER_URI=receiver.host_port,
        LOG_FORMAT="json",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    return env


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{name!r}: {[(s.service_name, s.name) for s in spans]}"
    return found[0]


async def test_send_and_process_spans_share_one_trace_across_processes(redis_url: str) -> None:
    async with OtlpReceiver() as receiver:
        produced, _ = await run_peer(peer_env(receiver, "trace-api"), "produce", redis_url, "tasks")
        consumed, consumer_log = await run_peer(
            peer_env(receiver, "trace-worker"),
            "consume",
            redis_url,
            "tasks",
            "workers",
            "results",
        )
        spans = await receiver.wait_for(
            lambda spans: (
                {"submit task", "send tasks", "process tasks", "send results"}
                <= {span.name for span in spans}
            ),
            timeout=30,
        )

    submit, send = one(spans, "submit task"), one(spans, "send tasks")
    process, provider = one(spans, "process tasks"), one(spans, "provider call")
    results = one(spans, "send results")

    # One trace, the right shape: submit -> send -> process -> (provider call, send results).
    assert {span.trace_id for span in spans} == {produced["trace_id"]}
    assert consumed["trace_id"] == produced["trace_id"]
    assert send.parent_span_id == submit.span_id
    assert process.parent_span_id == send.span_id
    assert [(link.trace_id, link.span_id) for link in process.links] == [
        (send.trace_id, send.span_id)
    ]
    assert provider.parent_span_id == process.span_id
    assert results.parent_span_id == process.span_id

    assert (send.kind, process.kind, results.kind) == ("PRODUCER", "CONSUMER", "PRODUCER")
    assert {submit.service_name, send.service_name} == {"trace-api"}
    assert {process.service_name, provider.service_name, results.service_name} == {"trace-worker"}
    assert send.attributes["messaging.message.id"] == produced["message_id"]
    assert process.attributes["messaging.message.id"] == produced["message_id"]
    assert send.attributes["messaging.redis.message.entry_id"] == produced["entry_id"]
    assert process.attributes["messaging.consumer.group.name"] == "workers"
    assert process.attributes["messaging.redis.message.delivery_count"] == 1
    assert process.attributes["orchestrator.delivery.settlement"] == "ack"

    # The worker's log line inside the activated span names the trace.
    lines = [orjson.loads(line) for line in consumer_log.splitlines() if line.startswith("{")]
    (processing,) = [line for line in lines if line["message"] == "processing"]
    assert processing["trace_id"] == produced["trace_id"]
    assert processing["span_id"] == process.span_id
