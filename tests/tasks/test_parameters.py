"""The parts of the parameter vocabulary the OpenAPI document must agree with: what a whole
number is, and what blank text is."""

from __future__ import annotations

import jsonschema_rs
import orjson
import pytest

from orchestrator_tasks import NOT_BLANK_PATTERN, is_blank
from orchestrator_tasks.parameters import (
    normalize_parameters,
    validate_parameters,
    whole_number,
)


@pytest.mark.parametrize(
    ("value", "whole"),
    [
        (3, 3),
        (3.0, 3),
        (-1.0, -1),
        (2.0**53, 2**53),
        (2**53 + 1, None),
        (3.5, None),
        (True, None),
        ("3", None),
    ],
)
def test_a_whole_number_is_an_int_or_integral_float_within_2_53(value: object, whole: int) -> None:
    assert whole_number(value) == whole


def test_a_float_past_2_53_is_no_whole_number_since_it_may_be_a_rounded_other_one() -> None:
    # orjson reads integers beyond 64 bits as floats: this one rounds to -2**63
    value = orjson.loads("-9223372036854775809")
    assert type(value) is float
    assert whole_number(value) is None
    assert validate_parameters("openai/gpt-4o", {"seed": value}) == [
        ("parameters.seed", "must be a whole number")
    ]


def test_integral_floats_are_valid_integers_and_sent_on_as_ints() -> None:
    parameters = {"max_tokens": 5.0, "seed": 7.0, "temperature": 1.0, "top_k": 2}
    assert validate_parameters("echo", parameters) == []
    normalized = normalize_parameters(parameters)
    assert normalized == {"max_tokens": 5, "seed": 7, "temperature": 1.0, "top_k": 2}
    assert type(normalized["max_tokens"]) is int
    assert type(normalized["temperature"]) is float  # a number parameter stays as given


@pytest.mark.parametrize(
    "text", ["", " ", "\t\n", "\x1c\x1d\x1e\x1f", "\x85", "\xa0", "\u2003", "\ufeff", "\u3000"]
)
def test_whitespace_of_python_and_of_ecmascript_is_blank(text: str) -> None:
    assert is_blank(text)


@pytest.mark.parametrize("text", ["x", " x ", "\x1cx", "\x00", "\u200b"])
def test_anything_else_is_not_blank(text: str) -> None:
    assert not is_blank(text)


def test_json_schema_and_the_server_agree_on_every_character() -> None:
    # jsonschema_rs matches patterns as JSON Schema says (ECMAScript), as schemathesis does.
    schema = jsonschema_rs.validator_for({"type": "string", "pattern": NOT_BLANK_PATTERN})
    for code in [*range(0x3100), 0xFEFF, 0x1_F600]:
        text = chr(code)
        assert schema.is_valid(text) is not is_blank(text), hex(code)
