"""The Provider protocol: one streaming completion call to one LLM API.

A provider turns a ``CompletionRequest`` into an async stream of items: ``str`` items are
chunks of answer text, in order; the last item is one ``Finish`` with the usage and the
finish reason. A provider raises ``ProviderError`` subclasses (never its HTTP client's own
exceptions) so the worker can tell a rate limit from a bad request.

Providers are shared by every task of a worker process: they hold long-lived resources (an
``aiohttp.ClientSession`` per provider, created on first use inside the running loop) and
release them in ``close()``. The worker closes the stream early (``aclose()``) when a task
times out or the worker shuts down, so a provider's stream must clean up in ``finally``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import attrs

from orchestrator_tasks.messages import ChatMessage, Usage, messages_of


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


def _conversation(value: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    return tuple(value)


@attrs.frozen
class CompletionRequest:
    """What to ask the model: the conversation to answer, in order.

    ``model`` is the provider's own model name: ``gpt-4o-mini`` for the task model
    ``openai/gpt-4o-mini``. ``parameters`` are the task's free-form parameters
    (``temperature``, ``max_tokens``, provider-specific ones); a provider ignores what it does
    not know and raises ``InvalidRequest`` for values it cannot use. ``task_id`` is for logs
    and provider-side request tagging, never for the prompt. ``CompletionRequest.of`` builds
    the one-prompt request.
    """

    model: str
    messages: tuple[ChatMessage, ...] = attrs.field(converter=_conversation)
    parameters: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    task_id: str = ""

    @classmethod
    def of(
        cls, model: str, prompt: str, system: str | None = None, **fields: Any
    ) -> CompletionRequest:
        """The request for ``prompt`` (one user message) after ``system``, if any."""
        return cls(model=model, messages=messages_of(prompt, system), **fields)

    @property
    def last_user_message(self) -> str:
        """The content of the last user message ("" if none)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def system_messages(self) -> list[str]:
        """The contents of the system messages, in order."""
        return [m.content for m in self.messages if m.role == "system"]


@attrs.frozen
class Finish:
    """The last item of a stream: token usage (None if unknown) and why the model stopped
    (``stop``, ``length``, ``content_filter``... as the provider names it)."""

    usage: Usage | None = None
    finish_reason: str | None = None


#: One item of a provider stream: a text chunk, or the closing ``Finish``.
StreamItem: TypeAlias = str | Finish


@runtime_checkable
class Provider(Protocol):
    """One LLM API (``echo``, ``openai``, ``gemini``...), reached through a model prefix."""

    @property
    def name(self) -> str:
        """The prefix that routes to this provider, and the ``provider`` field of events."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """Answer ``request`` as text chunks, then one ``Finish``.

        Usually an async generator. Raises ``ProviderError`` (possibly after some chunks).
        """
        ...

    async def close(self) -> None:
        """Release sessions and connections; idempotent."""
        ...
