"""WorkerSettings.from_env: defaults, every variable, and errors that name the variable."""

from __future__ import annotations

import pytest

from orchestrator_worker import ConfigError, WorkerSettings
from orchestrator_worker.service import connect_broker


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = WorkerSettings.from_env({})

    assert settings.app_id == "ai-orchestrator_worker"
    assert settings.stream == "tasks"
    assert settings.results_stream == "results"
    assert settings.consumer_group == "workers"
    assert settings.consumer_name is None
    assert settings.concurrency == 5
    assert settings.default_model == "echo"
    assert settings.task_timeout == 300
    assert settings.lease_seconds == 30
    assert settings.shutdown_grace == 25
    assert settings.delta_flush_interval == pytest.approx(0.1)
    assert (settings.max_attempts, settings.max_deliveries) == (5, 6)
    assert (settings.log_level, settings.log_format) == ("INFO", "plain")
    assert settings.telemetry is not None
    assert settings.telemetry.service_name == "ai-orchestrator_worker"


def test_every_variable_is_read() -> None:
    settings = WorkerSettings.from_env(
        {
            "APP_ID": "my-worker",
            "REDIS_URI": "redis:6379",
            "JAEGER_URI": "otel:4318",
            "REDIS_STREAM_ID": "jobs",
            "REDIS_RESULTS_STREAM_ID": "answers",
            "CONSUMER_GROUP": "pool",
            "CONSUMER_NAME": "w-7",
            "NUMBER_OF_WORKERS": "1000",
            "DEFAULT_MODEL": "openai/gpt-4o-mini",
            "TASK_TIMEOUT_SECONDS": "12.5",
            "LEASE_SECONDS": "10",
            "MAX_DELIVERIES": "3",
            "DEAD_LETTER_MAXLEN": "50",
            "SHUTDOWN_GRACE_SECONDS": "0",
            "DELTA_FLUSH_MS": "250",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "SOMETHING_ELSE": "ignored",
        }
    )

    assert settings.app_id == "my-worker"
    assert settings.redis_uri == "redis:6379"
    assert settings.jaeger_uri == "otel:4318"
    assert (settings.stream, settings.results_stream) == ("jobs", "answers")
    assert (settings.consumer_group, settings.consumer_name) == ("pool", "w-7")
    assert settings.concurrency == 1000
    assert settings.default_model == "openai/gpt-4o-mini"
    assert settings.task_timeout == 12.5
    assert settings.lease_seconds == 10
    assert (settings.max_attempts, settings.max_deliveries) == (2, 3)
    assert settings.dead_letter_maxlen == 50
    assert settings.shutdown_grace == 0
    assert settings.delta_flush_interval == pytest.approx(0.25)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert settings.telemetry is not None
    assert settings.telemetry.service_name == "my-worker"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NUMBER_OF_WORKERS", "five"),
        ("NUMBER_OF_WORKERS", "0"),
        ("NUMBER_OF_WORKERS", "-3"),
        ("TASK_TIMEOUT_SECONDS", "0"),
        ("TASK_TIMEOUT_SECONDS", "nan"),
        ("LEASE_SECONDS", "soon"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
        ("DELTA_FLUSH_MS", "inf"),
        ("MAX_DELIVERIES", "0"),
        ("DEAD_LETTER_MAXLEN", "-5"),
        ("METRICS_MAX_LABEL_VALUES", "0"),
        ("ECHO_ENABLED", "maybe"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_STREAM_ID", "tasks with spaces"),
        ("REDIS_RESULTS_STREAM_ID", "tasks"),
        ("REDIS_URI", "http://cache:6379"),
        ("REDIS_URI", "cache"),
    ],
)
def test_a_malformed_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({variable: value})

    assert raised.value.variable == variable
    assert variable in str(raised.value)


def test_the_redis_password_stays_out_of_repr() -> None:
    settings = WorkerSettings.from_env({"REDIS_URI": "redis://:hunter2@cache:6379/0"})

    assert "hunter2" not in repr(settings)


def test_the_docstring_documents_every_variable() -> None:
    doc = WorkerSettings.__doc__ or ""
    for variable in (
        "APP_ID", "REDIS_URI", "JAEGER_URI", "REDIS_STREAM_ID", "REDIS_RESULTS_STREAM_ID",
        "CONSUMER_GROUP", "CONSUMER_NAME", "NUMBER_OF_WORKERS", "DEFAULT_MODEL",
        "TASK_TIMEOUT_SECONDS", "LEASE_SECONDS", "MAX_DELIVERIES", "SHUTDOWN_GRACE_SECONDS",
        "DELTA_FLUSH_MS", "LOG_LEVEL", "LOG_FORMAT",
    ):  # fmt: skip
        assert f"``{variable}``" in doc


def test_the_entry_point_exits_with_one_line_on_a_bad_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator_worker import main

    with pytest.raises(SystemExit) as raised:
        main({"NUMBER_OF_WORKERS": "many"})

    assert raised.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "configuration error: NUMBER_OF_WORKERS: 'many' is not a whole number"
    ]


def test_provider_settings_are_read_and_keys_stay_hidden() -> None:
    settings = WorkerSettings.from_env({"OPENAI_API_KEY": "sk-very-secret", "GEMINI_API_KEY": "g"})

    assert settings.providers is not None
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in repr(settings.providers)


async def test_a_default_model_no_provider_serves_stops_the_process_at_startup() -> None:
    import asyncio
    import os
    import sys

    from tests.support.redis_server import free_port

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "JAEGER"))},
        "DEFAULT_MODEL": "nonesuch/model",
        "REDIS_URI": f"redis://127.0.0.1:{free_port()}/0",  # never contacted
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator_worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()

    assert process.returncode == 2
    assert (
        err.decode()
        .strip()
        .splitlines()[-1]
        .startswith("configuration error: DEFAULT_MODEL: 'nonesuch/model' names no provider")
    )


async def test_the_broker_keeps_dead_letter_maxlen_dead_letters() -> None:
    settings = WorkerSettings.from_env({"REDIS_URI": "127.0.0.1:1", "DEAD_LETTER_MAXLEN": "50"})
    broker = connect_broker(settings)
    try:
        assert getattr(broker, "dead_letter_maxlen", None) == 50
    finally:
        await broker.close()


def test_echo_is_on_unless_echo_enabled_is_false() -> None:
    assert WorkerSettings.from_env({}).echo_enabled is True
    assert WorkerSettings.from_env({"ECHO_ENABLED": "false"}).echo_enabled is False


def test_tenant_weights_caps_and_aging_make_the_fairness() -> None:
    settings = WorkerSettings.from_env(
        {
            "TENANT_WEIGHTS": "*=1, acme=3",
            "TENANT_CONCURRENCY": "*=20,acme=50",
            "PRIORITY_AGING_SECONDS": "30",
        }
    )
    fairness = settings.fairness
    assert (fairness.weight("acme"), fairness.weight("other")) == (3.0, 1.0)
    assert (fairness.cap("acme"), fairness.cap("other")) == (50, 20)
    assert fairness.aging == 30.0


def test_without_tenant_settings_every_tenant_weighs_one_and_has_no_cap() -> None:
    fairness = WorkerSettings.from_env({}).fairness
    assert (fairness.weight("x"), fairness.cap("x"), fairness.aging) == (1.0, None, 60.0)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TENANT_WEIGHTS", "acme=0"),
        ("TENANT_WEIGHTS", "acme=x"),
        ("TENANT_WEIGHTS", "a cme=1"),
        ("TENANT_CONCURRENCY", "acme=0"),
        ("TENANT_CONCURRENCY", "acme=1.5"),
        ("TENANT_CONCURRENCY", "acme"),
        ("PRIORITY_AGING_SECONDS", "0"),
    ],
)
def test_a_malformed_tenant_setting_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        WorkerSettings.from_env({variable: raw})
    assert raised.value.variable == variable
