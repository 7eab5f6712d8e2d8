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
    return attributes
