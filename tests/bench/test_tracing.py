"""``bench --tracing``: the OTLP sink counts what it is sent, and the JSON says what ran."""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.bench.otlp_sink import make_app
from tests.bench.tracing import OFF, describe, ratio, sink_env

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def export_request(*scope_sizes: int) -> bytes:
    """A serialized request with one scope per size, each holding that many spans."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for size in scope_sizes:
        scope_spans = resource_spans.scope_spans.add()
        for i in range(size):
            span = scope_spans.spans.add()
            span.name = f"span-{i}"
            span.trace_id = bytes(16)
            span.span_id = i.to_bytes(8, "big")
    body: bytes = request.SerializeToString()
    return body


async def stats_of(client: TestClient[Any, Any]) -> Any:
    response = await client.get("/stats")
    assert response.status == 200
    return await response.json()


async def test_sink_counts_the_spans_of_every_scope_and_answers_an_empty_response(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(make_app())

    response = await client.post("/v1/traces", data=export_request(3, 2), headers=PROTOBUF)

    assert response.status == 200
    assert response.content_type == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(await response.read()).ByteSize() == 0
    assert await stats_of(client) == {"requests": 1, "spans": 5, "rejected": 0}


async def test_sink_accepts_gzip_bodies(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    body = gzip.compress(export_request(4))

    declared = await client.post(
        "/v1/traces", data=body, headers={**PROTOBUF, "Content-Encoding": "gzip"}
    )
    undeclared = await client.post("/v1/traces", data=body, headers=PROTOBUF)

    assert (declared.status, undeclared.status) == (200, 200)
    assert await stats_of(client) == {"requests": 2, "spans": 8, "rejected": 0}


async def test_sink_rejects_a_body_that_is_not_an_export_request(
    aiohttp_client: ClientFactory,
) -> None:
    client = await aiohttp_client(make_app())

    response = await client.post("/v1/traces", data=b"\xff\xff not protobuf", headers=PROTOBUF)

    assert response.status == 400
    assert await stats_of(client) == {"requests": 0, "spans": 0, "rejected": 1}


@pytest.mark.parametrize("text", ["0", "-0.5", "1.5", "nan", "half"])
def test_tracing_ratio_must_be_in_zero_to_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        ratio(text)


def test_sink_env_points_the_services_at_the_sink_with_a_ratio_sampler() -> None:
    assert sink_env(4318, 0.1) == {
        "JAEGER_URI": "127.0.0.1:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }


def test_tracing_is_described_as_off_only_when_nothing_turns_it_on() -> None:
    assert describe(None, {}) == OFF
    assert describe(None, {"LOG_LEVEL": "INFO"}) == OFF


def test_tracing_to_the_sink_is_described_with_its_ratio() -> None:
    described = describe(0.1, {})

    assert isinstance(described, dict)
    assert described["ratio"] == 0.1
    assert described["exporter"] == "OTLP/HTTP to a local sink"
    assert described["services_env"]["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"


def test_service_env_that_exports_is_not_described_as_off() -> None:
    described = describe(None, {"JAEGER_URI": "http://user:secret@collector:4318"})

    assert isinstance(described, dict)
    assert described["ratio"] == 1.0  # the services' default sampler: parentbased_always_on
    assert described["exporter"].startswith("OTLP/HTTP to http://collector:4318")
    assert "secret" not in repr(described)
    assert described["set_by_service_env"] == ["JAEGER_URI"]


def test_service_env_wins_over_the_tracing_option() -> None:
    described = describe(
        1.0, {"OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_EXPORTER_OTLP_HEADERS": "k=secret"}
    )

    assert isinstance(described, dict)
    assert described["ratio"] == 0.25
    assert described["exporter"] == "OTLP/HTTP to a local sink"
    assert described["services_env"]["OTEL_EXPORTER_OTLP_HEADERS"] == "<redacted>"


def test_service_env_that_disables_the_sdk_is_described_as_not_exporting() -> None:
    described = describe(1.0, {"OTEL_SDK_DISABLED": "true"})

    assert isinstance(described, dict)
    assert described["exporter"] == "none (OTEL_SDK_DISABLED=true)"
