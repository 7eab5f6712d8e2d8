"""Settings come from environment variables; the standard OTEL ones beat the seed's JAEGER_URI."""

from __future__ import annotations

import pytest

from orchestrator_telemetry import TelemetryConfigError, TelemetrySettings, jaeger_uri_endpoint


def settings(**environ: str) -> TelemetrySettings:
    return TelemetrySettings.from_env(environ, default_service_name="default-svc")


@pytest.mark.parametrize(
    ("value", "endpoint"),
    [
        ("jaeger:4318", "http://jaeger:4318/v1/traces"),
        ("127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("jaeger", "http://jaeger:4318/v1/traces"),
        ("http://jaeger:4318", "http://jaeger:4318/v1/traces"),
        ("http://jaeger:4318/", "http://jaeger:4318/v1/traces"),
        ("https://otel.example.com", "https://otel.example.com:4318/v1/traces"),
        ("http://jaeger:4318/v1/traces", "http://jaeger:4318/v1/traces"),
        ("http://collector:80/otlp", "http://collector:80/otlp/v1/traces"),
        ("[::1]:4318", "http://[::1]:4318/v1/traces"),
        (" jaeger:4318 ", "http://jaeger:4318/v1/traces"),
    ],
)
def test_jaeger_uri_means_the_otlp_http_traces_url(value: str, endpoint: str) -> None:
    assert jaeger_uri_endpoint(value) == endpoint
    configured = settings(JAEGER_URI=value)
    assert configured.traces_endpoint == endpoint
    assert configured.endpoint_source == "JAEGER_URI"
    assert configured.exporting


def test_nothing_configured_means_not_exporting() -> None:
    configured = settings()
    assert configured.traces_endpoint is None
    assert not configured.exporting
    assert configured.endpoint_for_log == "off (no OTLP endpoint configured)"


def test_blank_values_count_as_unset() -> None:
    assert settings(JAEGER_URI="  ", OTEL_EXPORTER_OTLP_ENDPOINT="").traces_endpoint is None


def test_otel_endpoint_beats_jaeger_uri_and_gets_the_traces_path() -> None:
    configured = settings(JAEGER_URI="jaeger:4318", OTEL_EXPORTER_OTLP_ENDPOINT="http://otel:4318/")
    assert configured.traces_endpoint == "http://otel:4318/v1/traces"
    assert configured.endpoint_source == "OTEL_EXPORTER_OTLP_ENDPOINT"


def test_traces_endpoint_beats_both_and_is_used_as_given() -> None:
    configured = settings(
        JAEGER_URI="jaeger:4318",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://otel:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://traces:9999/custom",
    )
    assert configured.traces_endpoint == "http://traces:9999/custom"
    assert configured.endpoint_source == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def test_sdk_disabled_turns_exporting_off_despite_an_endpoint() -> None:
    configured = settings(JAEGER_URI="jaeger:4318", OTEL_SDK_DISABLED="TRUE")
    assert configured.disabled
    assert not configured.exporting
    assert configured.endpoint_for_log == "off (OTEL_SDK_DISABLED=true)"


def test_traces_exporter_none_turns_exporting_off() -> None:
    configured = settings(JAEGER_URI="jaeger:4318", OTEL_TRACES_EXPORTER="none")
    assert not configured.exporting
    assert "OTEL_TRACES_EXPORTER=none" in configured.endpoint_for_log


def test_service_name_precedence() -> None:
    assert settings().service_name == "default-svc"
    assert settings(OTEL_RESOURCE_ATTRIBUTES="service.name=res").service_name == "res"
    assert settings(APP_ID="app", OTEL_RESOURCE_ATTRIBUTES="service.name=res").service_name == (
        "app"
    )
    assert settings(APP_ID="app", OTEL_SERVICE_NAME="otel").service_name == "otel"


def test_resource_attributes_are_kept_and_decoded() -> None:
    configured = settings(
        OTEL_RESOURCE_ATTRIBUTES=(
            "deployment.environment.name=prod, team=a%20b,service.version=9.9,"
            "service.instance.id=pod-1"
        )
    )
    assert configured.resource_attributes == {"deployment.environment.name": "prod", "team": "a b"}
    assert configured.service_version == "9.9"
    assert configured.instance_id == "pod-1"


def test_headers_specific_variable_wins_and_never_shows() -> None:
    configured = settings(
        JAEGER_URI="http://user:secret@jaeger:4318/?token=abc",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Basic%20xyz",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-api-key=k1,x-tenant=t",
    )
    assert configured.headers == {"x-api-key": "k1", "x-tenant": "t"}
    assert "k1" not in repr(configured)
    shown = configured.endpoint_for_log
    assert shown == "http://jaeger:4318/v1/traces (from JAEGER_URI)"
    assert "secret" not in shown
    assert "abc" not in shown


def test_generic_headers_apply_when_no_specific_ones() -> None:
    assert settings(OTEL_EXPORTER_OTLP_HEADERS="a=1").headers == {"a": "1"}


def test_sampler_defaults_and_ratio() -> None:
    assert (settings().sampler, settings().sampler_arg) == ("parentbased_always_on", None)
    configured = settings(OTEL_TRACES_SAMPLER="TraceIdRatio", OTEL_TRACES_SAMPLER_ARG="0.25")
    assert (configured.sampler, configured.sampler_arg) == ("traceidratio", 0.25)
    assert settings(OTEL_TRACES_SAMPLER="parentbased_traceidratio").sampler_arg == 1.0


def test_timeout_and_compression() -> None:
    configured = settings(
        OTEL_EXPORTER_OTLP_TIMEOUT="3", OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="GZIP"
    )
    assert (configured.timeout, configured.compression) == (3.0, "gzip")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JAEGER_URI", "jaeger:notaport"),
        ("JAEGER_URI", "jaeger:99999"),
        ("JAEGER_URI", "ftp://jaeger:21"),
        ("JAEGER_URI", "http://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost"),
        ("OTEL_SDK_DISABLED", "yes"),
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-1"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ("OTEL_RESOURCE_ATTRIBUTES", "=x"),
    ],
)
def test_malformed_values_are_errors_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(TelemetryConfigError, match=variable) as caught:
        settings(**{variable: value})
    assert caught.value.variable == variable
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "half"])
def test_malformed_sampler_ratio_is_an_error(ratio: str) -> None:
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        settings(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG=ratio)


def test_malformed_header_error_does_not_echo_the_value() -> None:
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as caught:
        settings(OTEL_EXPORTER_OTLP_HEADERS="a=1,secretwithoutequals")
    assert "secretwithoutequals" not in str(caught.value)


def test_an_unused_but_malformed_endpoint_still_fails_at_startup() -> None:
    with pytest.raises(TelemetryConfigError, match="JAEGER_URI"):
        settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://otel:4318", JAEGER_URI="x:y")
