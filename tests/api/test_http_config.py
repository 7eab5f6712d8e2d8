"""ApiSettings.from_env: defaults, every variable, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator_api.app import build_broker
from orchestrator_api.config import ApiSettings, ConfigError

KEYS = {"API_KEYS": "acme:k1"}


def test_defaults_match_the_original_service() -> None:
    settings = ApiSettings.from_env(KEYS)
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.app_id == "ai-orchestrator_api"
    assert settings.redis_uri is None
    assert settings.cache_ttl_minutes == 5
    assert settings.stream == "tasks"
    assert settings.results_stream == "results"
    assert settings.auth_disabled is False


def test_every_variable_is_read() -> None:
    settings = ApiSettings.from_env(
        {
            "PORT": "9000",
            "HOST": "127.0.0.1",
            "APP_ID": "api-2",
            "REDIS_URI": "redis:6379",
            "JAEGER_URI": "otel:4318",
            "CACHE_TTL_MINUTES": "0.5",
            "REDIS_STREAM_ID": "jobs",
            "REDIS_RESULTS_STREAM_ID": "answers",
            "API_KEYS": "acme:k1, globex:k:2",
            "MAX_BODY_BYTES": "4096",
            "MAX_PROMPT_CHARS": "10",
            "SHUTDOWN_GRACE_SECONDS": "3",
            "DEAD_LETTER_MAXLEN": "0",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
        }
    )
    assert (settings.port, settings.host, settings.app_id) == (9000, "127.0.0.1", "api-2")
    assert settings.redis_url == "redis://redis:6379"
    assert settings.jaeger_uri == "otel:4318"
    assert settings.cache_ttl_seconds == 30
    assert (settings.stream, settings.results_stream) == ("jobs", "answers")
    assert settings.api_keys == (("acme", "k1"), ("globex", "k:2"))
    assert (settings.max_body_bytes, settings.max_prompt_chars) == (4096, 10)
    assert settings.shutdown_grace_seconds == 3
    assert settings.dead_letter_maxlen == 0
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_keys_file_adds_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# tenants\nacme:k1\n\nglobex:k2\n", encoding="utf-8")
    settings = ApiSettings.from_env({"API_KEYS": "initech:k3", "API_KEYS_FILE": str(path)})
    assert settings.api_keys == (("initech", "k3"), ("acme", "k1"), ("globex", "k2"))


def test_starting_without_keys_is_refused_naming_api_keys() -> None:
    with pytest.raises(ConfigError, match="API_KEYS"):
        ApiSettings.from_env({})


def test_auth_can_be_disabled_explicitly() -> None:
    settings = ApiSettings.from_env({"AUTH_DISABLED": "true"})
    assert settings.auth_disabled
    assert settings.keyring().tenant(None) == "default"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("CACHE_TTL_MINUTES", "0"),
        ("CACHE_TTL_MINUTES", "-1"),
        ("CACHE_TTL_MINUTES", "soon"),
        ("AUTH_DISABLED", "maybe"),
        ("MAX_BODY_BYTES", "1k"),
        ("MAX_PROMPT_CHARS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "nan"),
        ("DEAD_LETTER_MAXLEN", "-1"),
        ("DEAD_LETTER_MAXLEN", "lots"),
        ("METRICS_MAX_LABEL_VALUES", "0"),
        ("METRICS_MAX_LABEL_VALUES", "many"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_STREAM_ID", "my tasks"),
        ("API_KEYS", "no-colon"),
        ("API_KEYS", "bad tenant:key"),
        ("API_KEYS", "acme:"),
        ("API_KEYS_FILE", "/nonexistent/keys"),
    ],
)
def test_malformed_values_are_errors_naming_the_variable(name: str, value: str) -> None:
    env = {**KEYS, name: value}
    with pytest.raises(ConfigError, match=name):
        ApiSettings.from_env(env)


def test_one_key_for_two_tenants_is_refused() -> None:
    with pytest.raises(ConfigError, match="API_KEYS"):
        ApiSettings.from_env({"API_KEYS": "acme:same,globex:same"})


def test_results_stream_must_differ_from_tasks_stream() -> None:
    with pytest.raises(ConfigError, match="REDIS_RESULTS_STREAM_ID"):
        ApiSettings.from_env({**KEYS, "REDIS_RESULTS_STREAM_ID": "tasks"})


def test_keys_and_passwords_stay_out_of_repr_and_logs() -> None:
    settings = ApiSettings.from_env(
        {"API_KEYS": "acme:sekrit-key", "REDIS_URI": "redis://:hunter2@db:6379/0"}
    )
    assert "sekrit" not in repr(settings)
    assert "hunter2" not in repr(settings)
    assert settings.masked_redis_url == "redis://:***@db:6379/0"


def test_a_password_with_an_at_sign_and_a_collector_login_stay_out_of_repr() -> None:
    settings = ApiSettings.from_env(
        {
            **KEYS,
            "REDIS_URI": "redis://app:p%40ss@word@db:6379/0",
            "JAEGER_URI": "http://otel:s3cret@collector:4318",
        }
    )

    for secret in ("p%40ss", "word@", "s3cret"):
        assert secret not in repr(settings)
        assert secret not in (settings.masked_redis_url or "")
    assert "collector:4318" in repr(settings)


def test_error_messages_never_echo_a_key() -> None:
    with pytest.raises(ConfigError) as failed:
        ApiSettings.from_env({"API_KEYS": "bad tenant:sekrit"})
    assert "sekrit" not in str(failed.value)


async def test_the_broker_keeps_dead_letter_maxlen_dead_letters() -> None:
    default = build_broker(ApiSettings.from_env(KEYS))
    capped = build_broker(ApiSettings.from_env({**KEYS, "DEAD_LETTER_MAXLEN": "7"}))
    on_redis = build_broker(
        ApiSettings.from_env({**KEYS, "REDIS_URI": "127.0.0.1:1", "DEAD_LETTER_MAXLEN": "7"})
    )
    try:
        assert getattr(default, "dead_letter_maxlen", None) == 10_000
        assert getattr(capped, "dead_letter_maxlen", None) == 7
        assert getattr(on_redis, "dead_letter_maxlen", None) == 7
    finally:
        for broker in (default, capped, on_redis):
            await broker.close()
