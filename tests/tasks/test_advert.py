"""The worker advert: its codec, what it serves, and what it lists."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_tasks import (
    InvalidAdvert,
    WorkerAdvert,
    decode_advert,
    encode_advert,
    presence_group,
)

ADVERT = WorkerAdvert(
    consumer="w-1",
    providers=("echo", "gemini", "openai"),
    default_model="openai/gpt-4o-mini",
    aliases={"fast": ("openai/gpt-4o-mini", "gemini/gemini-2.0-flash")},
    concurrency=5,
    started_at=1_700_000_000.5,
)


def test_an_advert_round_trips() -> None:
    assert decode_advert(encode_advert(ADVERT)) == ADVERT


def test_unknown_fields_are_ignored() -> None:
    payload: dict[str, Any] = {**encode_advert(ADVERT), "region": "eu", "future": [1]}
    assert decode_advert(payload) == ADVERT


def test_optional_fields_take_defaults() -> None:
    advert = decode_advert({"consumer": "w", "providers": ["echo"], "default_model": "echo"})
    assert (advert.aliases, advert.concurrency, advert.started_at) == ({}, 1, 0.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"consumer": None}, "consumer"),
        ({"providers": "echo"}, "providers"),
        ({"providers": [1]}, "providers"),
        ({"default_model": 3}, "default_model"),
        ({"aliases": {"fast": "openai/x"}}, "aliases"),
        ({"concurrency": True}, "concurrency"),
        ({"started_at": "now"}, "started_at"),
    ],
)
def test_a_malformed_advert_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidAdvert, match=field):
        decode_advert({**encode_advert(ADVERT), **change})


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidAdvert):
        decode_advert(["w-1"])


@pytest.mark.parametrize(
    "model", ["fast", "openai/gpt-4o", "openai", "gemini/gemini-2.5-pro", "echo", " echo "]
)
def test_it_serves_its_aliases_and_provider_prefixes(model: str) -> None:
    assert ADVERT.serves(model)


@pytest.mark.parametrize("model", ["slow", "anthropic/claude", "fast/x", "Echo", "ollama"])
def test_it_does_not_serve_other_models(model: str) -> None:
    assert not ADVERT.serves(model)


def test_models_lists_aliases_their_targets_the_default_and_echo_once_each() -> None:
    assert ADVERT.models() == ["fast", "openai/gpt-4o-mini", "gemini/gemini-2.0-flash", "echo"]


def test_presence_groups_are_per_tasks_stream() -> None:
    assert presence_group("tasks") != presence_group("other")
