"""Task parameters: validation by model prefix (what the API runs at submit time), mapping to
each API's names, and the provider settings read from the worker's environment."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_tasks.parameters import ECHO_FAILURES
from orchestrator_worker.errors import ConfigError
from orchestrator_worker.providers import (
    EchoProvider,
    GeminiProvider,
    OpenAIProvider,
    ProviderSettings,
    Secret,
    parse_duration,
    registry_from_env,
    retry_after_from_headers,
    validate_parameters,
)
from orchestrator_worker.providers import echo as echo_module
from orchestrator_worker.providers.parameters import (
    gemini_generation_config,
    openai_body_parameters,
)

COMMON = {
    "temperature": 0.7,
    "top_p": 1,
    "max_tokens": 100,
    "stop": ["\n"],
    "presence_penalty": 0,
    "frequency_penalty": 1.5,
    "seed": 7,
}


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "gemini/gemini-2.0-flash", "echo"])
def test_common_parameters_are_valid_everywhere(model: str) -> None:
    assert validate_parameters(model, COMMON) == []


def test_no_parameters_are_fine() -> None:
    assert validate_parameters("openai/x", {}) == []
    assert validate_parameters("openai/x", None) == []


def test_parameters_must_be_an_object() -> None:
    assert validate_parameters("openai/x", [1]) == [("parameters", "must be a JSON object")]


def test_null_values_count_as_absent() -> None:
    assert validate_parameters("gemini/x", {"temperature": None, "reasoning_effort": None}) == []


@pytest.mark.parametrize(
    ("model", "parameters", "field"),
    [
        ("openai/gpt-4o", {"top_k": 5}, "parameters.top_k"),
        ("openai/gpt-4o", {"thinking_budget": 5}, "parameters.thinking_budget"),
        ("openai/gpt-4o", {"latency_ms": 5}, "parameters.latency_ms"),
        ("gemini/g", {"reasoning_effort": "low"}, "parameters.reasoning_effort"),
        ("gemini/g", {"max_completion_tokens": 5}, "parameters.max_completion_tokens"),
        ("gemini/g", {"fail": "timeout"}, "parameters.fail"),
        ("openai/gpt-4o", {"n": 2}, "parameters.n"),
        ("echo", {"banana": 1}, "parameters.banana"),
    ],
)
def test_a_parameter_the_provider_does_not_support_is_an_error(
    model: str, parameters: dict[str, Any], field: str
) -> None:
    [(got_field, message)] = validate_parameters(model, parameters)

    assert got_field == field
    assert "not supported" in message


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": "hot"}, "parameters.temperature"),
        ({"temperature": True}, "parameters.temperature"),
        ({"temperature": 2.5}, "parameters.temperature"),
        ({"temperature": float("nan")}, "parameters.temperature"),
        ({"top_p": -0.1}, "parameters.top_p"),
        ({"max_tokens": 0}, "parameters.max_tokens"),
        ({"max_tokens": 10.5}, "parameters.max_tokens"),  # (10.0 is a whole number)
        ({"stop": ""}, "parameters.stop"),
        ({"stop": ["a", 1]}, "parameters.stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop"),  # openai: 4 at most
        ({"stop": []}, "parameters.stop"),
        ({"presence_penalty": 3}, "parameters.presence_penalty"),
        ({"seed": "7"}, "parameters.seed"),
        ({"reasoning_effort": "max"}, "parameters.reasoning_effort"),
    ],
)
def test_a_wrong_value_is_an_error_naming_the_field(parameters: dict[str, Any], field: str) -> None:
    [(got_field, message)] = validate_parameters("openai/gpt-4o", parameters)

    assert got_field == field
    assert message.startswith("must")


def test_every_problem_is_reported_at_once() -> None:
    problems = validate_parameters("gemini/g", {"top_k": 0, "temperature": -1, "x": 1})

    assert sorted(field for field, _ in problems) == [
        "parameters.temperature",
        "parameters.top_k",
        "parameters.x",
    ]


def test_gemini_allows_five_stop_sequences_and_32_bit_seeds_only() -> None:
    assert validate_parameters("gemini/g", {"stop": list("abcde")}) == []
    assert validate_parameters("gemini/g", {"seed": 2**31})[0][0] == "parameters.seed"
    assert validate_parameters("openai/g", {"seed": 2**31}) == []


@pytest.mark.parametrize(
    ("parameters", "valid"),
    [
        ({"latency_ms": 500, "chunk_delay_ms": 1.5, "fail": "rate_limit"}, True),
        ({"latency_ms": -1}, False),
        ({"latency_ms": "slow"}, False),
        ({"latency_ms": 10**12}, False),
        ({"latency_ms": 60_000, "chunk_delay_ms": 60_000}, True),
        ({"latency_ms": 60_001}, False),  # echo holds a slot for free: a minute at most
        ({"chunk_delay_ms": 3_600_000}, False),
        ({"fail": "everything"}, False),
        ({"temperature": 0.3, "top_k": 3}, True),  # ignored, so tasks can try echo unchanged
    ],
)
def test_echo_checks_its_own_knobs(parameters: dict[str, Any], valid: bool) -> None:
    assert (validate_parameters("echo", parameters) == []) is valid
    assert (validate_parameters("echo/anything", parameters) == []) is valid


def test_messages_read_plainly() -> None:
    assert validate_parameters("echo", {"latency_ms": "slow"}) == [
        ("parameters.latency_ms", "must be a number from 0 to 60000")
    ]


def test_echo_failures_match_the_echo_provider() -> None:
    assert frozenset(echo_module._FAILURES) == ECHO_FAILURES


@pytest.mark.parametrize("model", [None, "", "custom/model-x"])
def test_unknown_providers_get_a_lenient_check(model: str | None) -> None:
    # Unknown names pass (the worker's provider decides); known names need a value that
    # some provider accepts.
    assert validate_parameters(model, {"whatever": 1, "top_k": 3, "latency_ms": 10}) == []
    assert validate_parameters(model, {"temperature": "hot"}) == [
        ("parameters.temperature", "must be a number from 0 to 2")
    ]


def test_openai_fields_keep_their_names() -> None:
    assert openai_body_parameters({**COMMON, "top_k": None}) == COMMON


def test_gemini_generation_config_uses_gemini_names() -> None:
    assert gemini_generation_config({**COMMON, "stop": "END", "thinking_budget": -1}) == {
        "temperature": 0.7,
        "topP": 1,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "presencePenalty": 0,
        "frequencyPenalty": 1.5,
        "seed": 7,
        "thinkingConfig": {"thinkingBudget": -1},
    }


# -- settings --------------------------------------------------------------------------


def test_settings_default_to_the_public_apis() -> None:
    settings = ProviderSettings.from_env({})

    assert settings.openai.base_url == "https://api.openai.com/v1"
    assert settings.openai.api_key is None
    assert settings.gemini.base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert settings.http.connect_timeout == 10.0
    assert settings.http.read_timeout == 120.0
    assert settings.http.trace_content is False


def test_settings_read_the_environment() -> None:
    settings = ProviderSettings.from_env(
        {
            "OPENAI_BASE_URL": "http://localhost:11434/v1/",
            "OPENAI_API_KEY": "sk-1",
            "GEMINI_API_KEY": "g-1",
            "PROVIDER_CONNECT_TIMEOUT": "2.5",
            "PROVIDER_READ_TIMEOUT": "30",
            "PROVIDER_MAX_CONNECTIONS": "50",
            "TRACE_CONTENT": "true",
        }
    )

    assert settings.openai.base_url == "http://localhost:11434/v1"
    assert settings.openai.api_key == Secret("sk-1")
    assert settings.gemini.api_key == Secret("g-1")
    assert settings.gemini.http.connect_timeout == 2.5
    assert settings.openai.http.read_timeout == 30.0
    assert settings.http.max_connections == 50
    assert settings.http.trace_content is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPENAI_BASE_URL", "ftp://example.com"),
        ("OPENAI_BASE_URL", "https://user:sk-in-url@example.com/v1"),
        ("GEMINI_BASE_URL", "https://example.com/v1beta?key=AIza-in-url"),
        ("PROVIDER_CONNECT_TIMEOUT", "0"),
        ("PROVIDER_READ_TIMEOUT", "soon"),
        ("PROVIDER_MAX_CONNECTIONS", "-1"),
        ("TRACE_CONTENT", "maybe"),
    ],
)
def test_a_malformed_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ProviderSettings.from_env({variable: value})

    assert raised.value.variable == variable
    assert "in-url" not in str(raised.value)  # a mistyped URL may hold a key


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "GEMINI_API_KEY"])
@pytest.mark.parametrize("inside", ["\r\n", "\n", "\r", "\x00", "\x7f"])
def test_a_provider_key_with_a_control_character_is_refused_naming_it(
    variable: str, inside: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        ProviderSettings.from_env({variable: f"sk-canary{inside}X-Injected: 1"})

    assert raised.value.variable == variable
    assert "canary" not in str(raised.value)
    assert "Injected" not in str(raised.value)


def test_keys_never_show_in_reprs() -> None:
    settings = ProviderSettings.from_env({"OPENAI_API_KEY": "sk-hide", "GEMINI_API_KEY": "g-hide"})

    for shown in (repr(settings), str(settings), repr(settings.openai.api_key)):
        assert "hide" not in shown


async def test_the_worker_registry_serves_all_three_providers() -> None:
    registry = registry_from_env({"GEMINI_API_KEY": "g"}, default_model="openai/llama3")

    assert registry.names == ["echo", "gemini", "openai"]
    assert isinstance(registry.resolve("openai/gpt-4o").provider, OpenAIProvider)
    assert isinstance(registry.resolve("gemini/gemini-2.0-flash").provider, GeminiProvider)
    assert isinstance(registry.resolve("echo").provider, EchoProvider)
    assert registry.resolve(None).model == "llama3"
    await registry.close()


# -- retry hints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("35s", 35.0),
        ("2", 2.0),
        ("0.5", 0.5),
        ("soon", None),
        ("5x", None),
        ("", None),
        (None, None),
    ],
)
def test_durations_parse_like_the_providers_write_them(text: str | None, seconds: float) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_wins_over_the_reset_headers() -> None:
    headers = {"Retry-After": "3", "x-ratelimit-reset-requests": "1m"}

    assert retry_after_from_headers(headers) == 3.0
