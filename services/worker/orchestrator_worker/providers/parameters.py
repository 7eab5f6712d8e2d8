"""Task ``parameters`` in each provider API's own names.

The vocabulary and its validation are the contract's (``orchestrator_tasks.parameters``);
these functions take parameters already validated there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator_tasks.parameters import is_number, present_parameters, validate_parameters

__all__ = [
    "gemini_generation_config",
    "openai_body_parameters",
    "span_attributes",
    "validate_parameters",
]


def openai_body_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions request fields for validated ``parameters``."""
    return {spec.openai: value for spec, value in present_parameters(parameters) if spec.openai}


def gemini_generation_config(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generationConfig`` object for validated ``parameters`` (empty if none)."""
    config: dict[str, Any] = {}
    for spec, value in present_parameters(parameters):
        if spec.name == "response_format":
            config.update(_gemini_response_format(value))
            continue
        if not spec.gemini:
            continue
        if spec.name == "stop" and isinstance(value, str):
            value = [value]
        *parents, leaf = spec.gemini.split(".")
        target = config
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return config


def _gemini_response_format(value: Mapping[str, Any]) -> dict[str, Any]:
    """``responseMimeType`` (and ``responseSchema``) for a validated ``response_format``."""
    kind = value.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        return {
            "responseMimeType": "application/json",
            "responseSchema": value["json_schema"]["schema"],
        }
    return {}  # "text": Gemini's default


def span_attributes(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gen_ai.request.*`` span attributes for ``parameters`` (valid values only)."""
    attributes: dict[str, Any] = {}
    for spec, value in present_parameters(parameters):
        if spec.span and is_number(value):
            attributes[spec.span] = value
        elif spec.name == "stop":
            stops = [value] if isinstance(value, str) else value
            if isinstance(stops, list) and all(isinstance(s, str) for s in stops):
                attributes["gen_ai.request.stop_sequences"] = tuple(stops)
        elif spec.name == "response_format" and isinstance(value, Mapping):
            kind = value.get("type")
            if kind in ("json_object", "json_schema", "text"):
                attributes["gen_ai.output.type"] = "text" if kind == "text" else "json"
    return attributes
