"""Task ``parameters``: one vocabulary for every provider, checked at submit time (by the
API) and again when the task runs (by the worker's provider), and the names each provider's
API gives them (the worker's ``providers.parameters`` maps them).

============================= ============================ ===================================
Parameter                     Providers                    Value; OpenAI / Gemini name
============================= ============================ ===================================
``temperature``               openai, gemini, echo         number 0..2; ``temperature`` /
                                                           ``generationConfig.temperature``
``top_p``                     openai, gemini, echo         number 0..1; ``top_p`` / ``topP``
``top_k``                     gemini, echo                 integer >= 1; ``topK``
``max_tokens``                openai, gemini, echo         integer >= 1; ``max_tokens`` /
                                                           ``maxOutputTokens``
``max_completion_tokens``     openai                       integer >= 1 (OpenAI's reasoning
                                                           models want this one)
``stop``                      openai, gemini, echo         string or list of 1..4 (openai) /
                                                           1..5 (gemini) non-empty strings;
                                                           ``stop`` / ``stopSequences``
``presence_penalty``          openai, gemini, echo         number -2..2; ``presence_penalty``
                                                           / ``presencePenalty``
``frequency_penalty``         openai, gemini, echo         number -2..2; ``frequency_penalty``
                                                           / ``frequencyPenalty``
``seed``                      openai, gemini, echo         integer (gemini: 32-bit);
                                                           ``seed`` / ``seed``
``reasoning_effort``          openai                       ``none``, ``minimal``, ``low``,
                                                           ``medium``, ``high``, ``xhigh``
``thinking_budget``           gemini                       integer >= -1 (-1: dynamic, 0: off);
                                                           ``thinkingConfig.thinkingBudget``
``response_format``           openai, gemini, echo         ``{"type": "json_object"}``,
                                                           ``{"type": "json_schema",
                                                           "json_schema": {"name", "schema",
                                                           "strict", "description"}}`` (not
                                                           echo) or ``{"type": "text"}``;
                                                           ``response_format`` as is /
                                                           ``responseMimeType`` +
                                                           ``responseSchema``
``latency_ms``                echo                         number 0..60,000
``chunk_delay_ms``            echo                         number 0..60,000
``fail``                      echo                         an error type (see ``echo``)
============================= ============================ ===================================

``response_format`` asks for a JSON answer: any JSON object (``json_object``), or one
following a JSON schema (``json_schema``: ``name`` of 1 to 64 letters, digits, ``_`` or
``-``; ``schema`` an object; optional ``strict`` and ``description``). OpenAI-compatible
providers get it unchanged; Gemini gets ``responseMimeType: application/json`` and, for a
schema, ``responseSchema`` (Gemini reads the OpenAPI subset of JSON Schema and always holds
the answer to it, whatever ``strict`` says). ``echo`` answers ``json_object`` with the text
wrapped as ``{"text": ...}``; it cannot follow an arbitrary schema, so ``json_schema`` on
``echo`` is refused rather than answered with JSON of the wrong shape.

A ``null`` value counts as absent. ``echo`` accepts the common sampling parameters (and
ignores them), so a task can be tried on ``echo`` unchanged.

Validation happens by model *prefix*: the API knows ``echo``, ``openai`` and ``gemini`` and
rejects, with a 400, a parameter that prefix does not support or a value of the wrong type.
A model with another prefix (a provider registered by code the API does not run), or no
model at all (the worker's ``DEFAULT_MODEL`` decides), gets a lenient check: known
parameters must have valid values for *some* provider, unknown ones pass through, and the
worker's provider has the last word when the task runs (the providers call the same
functions and fail the task with ``invalid_request``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

__all__ = [
    "ECHO",
    "ECHO_FAILURES",
    "GEMINI",
    "KNOWN_PROVIDERS",
    "MAX_ECHO_DELAY_MS",
    "MAX_WHOLE_NUMBER",
    "OPENAI",
    "PARAMETERS",
    "ParameterSpec",
    "is_number",
    "normalize_parameters",
    "present_parameters",
    "provider_of",
    "validate_parameters",
    "whole_number",
]

#: Provider prefixes whose parameters are known here.
OPENAI: Final = "openai"
GEMINI: Final = "gemini"
ECHO: Final = "echo"
KNOWN_PROVIDERS: Final = frozenset({OPENAI, GEMINI, ECHO})

#: The error types ``echo``'s ``fail`` parameter can produce (kept equal to echo's table).
ECHO_FAILURES: Final = frozenset(
    {
        "rate_limit",
        "timeout",
        "server_error",
        "unavailable",
        "invalid_request",
        "authentication",
        "content_filter",
    }
)
#: Longest simulated delay of echo (a minute): echo costs nothing, so a tenant could
#: otherwise hold worker slots for free.
MAX_ECHO_DELAY_MS: Final = 60_000
_MAX_DELAY_MS: Final = MAX_ECHO_DELAY_MS
_REASONING_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh")
_INT32: Final = 2**31
#: The largest whole number a parameter takes (JSON numbers are exact integers up to here).
_EXACT_FLOAT_INTEGERS: Final = 2**53
MAX_WHOLE_NUMBER: Final = _EXACT_FLOAT_INTEGERS
_SCHEMA_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RESPONSE_FORMATS: Final = "text, json_object, json_schema"
_JSON_SCHEMA_KEYS: Final = frozenset({"name", "schema", "strict", "description"})

#: A check: the provider prefix and the value -> an error message, or None when valid.
Check = Callable[[str, Any], "str | None"]


def is_number(value: Any) -> bool:
    return (
        type(value) is int or (type(value) is float and math.isfinite(value))
    ) and not isinstance(value, bool)


def _number(low: float, high: float) -> Check:
    message = f"must be a number from {_plain(low)} to {_plain(high)}"

    def check(_: str, value: Any) -> str | None:
        if not is_number(value) or not low <= value <= high:
            return message
        return None

    return check


def _plain(number: float) -> str:
    """``3600000`` rather than ``3.6e+06``, ``0.5`` rather than ``0.50``."""
    return str(int(number)) if float(number).is_integer() else str(number)


def whole_number(value: Any) -> int | None:
    """``value`` as an ``int`` if it is a whole number, else None. ``3.0`` is one: JSON (and
    JSON Schema's ``integer``) does not tell ``3`` from ``3.0``, so neither do we. Whole
    numbers stop at +-2**53, the integers a JSON number holds exactly everywhere: past that a
    float may be a rounded other integer (orjson reads integers outside 64 bits as floats,
    so ``-9223372036854775809`` would pass for ``-2**63``), and the document says the same
    (``maximum``/``minimum`` of every integer parameter)."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is int and abs(value) <= _EXACT_FLOAT_INTEGERS:
        return value
    return None


def _integer(low: int, high: int | None = None) -> Check:
    def check(_: str, value: Any) -> str | None:
        value = whole_number(value)
        if value is None or value < low or (high is not None and value > high):
            upper = f" to {high}" if high is not None else " or more"
            return f"must be a whole number from {low}{upper}"
        return None

    return check


def _seed(provider: str, value: Any) -> str | None:
    value = whole_number(value)
    if value is None:
        return "must be a whole number"
    if provider == GEMINI and not -_INT32 <= value < _INT32:
        return "must be a 32-bit whole number for gemini"
    if not -(2**63) <= value < 2**63:
        return "must be a 64-bit whole number"
    return None


def _stop(provider: str, value: Any) -> str | None:
    most = 4 if provider == OPENAI else 5
    if type(value) is str:
        return None if value else "must not be empty"
    if (
        type(value) is not list
        or not 1 <= len(value) <= most
        or not all(type(item) is str and item for item in value)
    ):
        return f"must be a non-empty string or a list of 1 to {most} non-empty strings"
    return None


def _reasoning_effort(_: str, value: Any) -> str | None:
    if value not in _REASONING_EFFORTS:
        return f"must be one of {', '.join(_REASONING_EFFORTS)}"
    return None


def _response_format(provider: str, value: Any) -> str | None:
    if type(value) is not dict:
        return 'must be an object such as {"type": "json_object"}'
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return f"type must be one of {_RESPONSE_FORMATS}"
    extra = sorted(
        set(value) - {"type", "json_schema"} if kind == "json_schema" else set(value) - {"type"}
    )
    if extra:
        return f"{extra[0]} is not a field of a {kind} response format"
    if kind != "json_schema":
        return None
    if provider == ECHO:
        return 'echo cannot follow a JSON schema (it answers json_object as {"text": ...})'
    schema = value.get("json_schema")
    if type(schema) is not dict:
        return "json_schema must be an object with a name and a schema"
    unknown = sorted(set(schema) - _JSON_SCHEMA_KEYS)
    if unknown:
        return f"json_schema.{unknown[0]} is not a field of json_schema"
    name = schema.get("name")
    if type(name) is not str or not _SCHEMA_NAME.fullmatch(name):
        return "json_schema.name must be 1 to 64 letters, digits, _ or -"
    if type(schema.get("schema")) is not dict:
        return "json_schema.schema must be a JSON Schema object"
    if schema.get("strict") is not None and type(schema["strict"]) is not bool:
        return "json_schema.strict must be true or false"
    if schema.get("description") is not None and type(schema["description"]) is not str:
        return "json_schema.description must be a string"
    return None


def _fail(_: str, value: Any) -> str | None:
    if type(value) is not str or value not in ECHO_FAILURES:
        return f"must be one of {', '.join(sorted(ECHO_FAILURES))}"
    return None


@attrs.frozen
class ParameterSpec:
    """One parameter: who accepts it, how it is checked, and what each API calls it.

    ``gemini`` is a path inside ``generationConfig`` (dotted for nested objects).
    """

    name: str
    providers: frozenset[str]
    check: Check
    openai: str | None = None
    gemini: str | None = None
    span: str | None = None  # the gen_ai.request.* attribute, if semconv has one
    #: A whole number: ``normalize_parameters`` sends ``3.0`` on as ``3``.
    integer: bool = False


_SAMPLING = frozenset({OPENAI, GEMINI, ECHO})

#: Every parameter any known provider accepts, by name.
PARAMETERS: Final[Mapping[str, ParameterSpec]] = {
    spec.name: spec
    for spec in (
        ParameterSpec(
            "temperature",
            _SAMPLING,
            _number(0, 2),
            openai="temperature",
            gemini="temperature",
            span="gen_ai.request.temperature",
        ),
        ParameterSpec("top_p", _SAMPLING, _number(0, 1), "top_p", "topP", "gen_ai.request.top_p"),
        ParameterSpec(
            "top_k",
            frozenset({GEMINI, ECHO}),
            _integer(1, _EXACT_FLOAT_INTEGERS),
            gemini="topK",
            span="gen_ai.request.top_k",
            integer=True,
        ),
        ParameterSpec(
            "max_tokens",
            _SAMPLING,
            _integer(1, _EXACT_FLOAT_INTEGERS),
            "max_tokens",
            "maxOutputTokens",
            "gen_ai.request.max_tokens",
            integer=True,
        ),
        ParameterSpec(
            "max_completion_tokens",
            frozenset({OPENAI}),
            _integer(1, _EXACT_FLOAT_INTEGERS),
            openai="max_completion_tokens",
            span="gen_ai.request.max_tokens",
            integer=True,
        ),
        ParameterSpec("stop", _SAMPLING, _stop, "stop", "stopSequences"),
        ParameterSpec(
            "presence_penalty",
            _SAMPLING,
            _number(-2, 2),
            "presence_penalty",
            "presencePenalty",
            "gen_ai.request.presence_penalty",
        ),
        ParameterSpec(
            "frequency_penalty",
            _SAMPLING,
            _number(-2, 2),
            "frequency_penalty",
            "frequencyPenalty",
            "gen_ai.request.frequency_penalty",
        ),
        ParameterSpec(
            "seed", _SAMPLING, _seed, "seed", "seed", "gen_ai.request.seed", integer=True
        ),
        ParameterSpec(
            "reasoning_effort", frozenset({OPENAI}), _reasoning_effort, openai="reasoning_effort"
        ),
        ParameterSpec(
            "thinking_budget",
            frozenset({GEMINI}),
            _integer(-1, _INT32 - 1),
            gemini="thinkingConfig.thinkingBudget",
            integer=True,
        ),
        # Gemini's two fields are built by the worker's gemini_generation_config.
        ParameterSpec("response_format", _SAMPLING, _response_format, openai="response_format"),
        ParameterSpec("latency_ms", frozenset({ECHO}), _number(0, _MAX_DELAY_MS)),
        ParameterSpec("chunk_delay_ms", frozenset({ECHO}), _number(0, _MAX_DELAY_MS)),
        ParameterSpec("fail", frozenset({ECHO}), _fail),
    )
}


def normalize_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` (already valid) with the whole numbers of integer parameters as ``int``
    (``3.0`` becomes ``3``), as providers expect them."""
    normalized = dict(parameters)
    for name, value in parameters.items():
        spec = PARAMETERS.get(name) if isinstance(name, str) else None
        if spec is not None and spec.integer and type(value) is float:
            whole = whole_number(value)
            if whole is not None:
                normalized[name] = whole
    return normalized


def provider_of(model: str | None) -> str | None:
    """The provider prefix of a task model (``openai/gpt-4o`` -> ``openai``); None if none."""
    name = (model or "").strip()
    return name.partition("/")[0] or None


def validate_parameters(model: str | None, parameters: Any) -> list[tuple[str, str]]:
    """Problems with a task's ``parameters`` for ``model``: ``(field, message)`` pairs, with
    ``field`` a dotted path such as ``parameters.temperature``; empty when all is well.

    Strict for the known prefixes (``echo``, ``openai``, ``gemini``): an unsupported name is
    an error. Lenient for others and for no model (see the module docstring). Never raises.
    """
    if parameters is None:
        return []
    if not isinstance(parameters, Mapping):
        return [("parameters", "must be a JSON object")]
    provider = provider_of(model)
    strict = provider in KNOWN_PROVIDERS
    errors: list[tuple[str, str]] = []
    for name, value in parameters.items():
        field = f"parameters.{name}"
        spec = PARAMETERS.get(name) if isinstance(name, str) else None
        if spec is None:
            if strict:
                errors.append((field, f"not supported by {provider}"))
            continue
        if value is None:
            continue
        if provider is not None and strict:
            if provider not in spec.providers:
                errors.append((field, f"not supported by {provider} ({_who(spec)} only)"))
                continue
            problem = spec.check(provider, value)
        else:
            # Unknown provider: valid for at least one provider that accepts it.
            problems = [spec.check(p, value) for p in sorted(spec.providers)]
            problem = None if None in problems else problems[0]
        if problem is not None:
            errors.append((field, problem))
    return errors


def _who(spec: ParameterSpec) -> str:
    return ", ".join(sorted(spec.providers))


def present_parameters(parameters: Mapping[str, Any]) -> list[tuple[ParameterSpec, Any]]:
    """The known parameters of ``parameters`` that have a value, with their specs."""
    return [
        (PARAMETERS[name], value)
        for name, value in parameters.items()
        if value is not None and name in PARAMETERS
    ]
