"""The broker library: a Broker protocol with Redis Streams and in-memory adapters, and the
Redis pipeline coalescer they and the API's task store share."""

from ._flags import SUBSCRIBED
from ._redis_coalesce import Command, PipelineCoalescer
from .errors import (
    AlreadySettled,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    LeaseLost,
)
from .memory import MemoryBroker
from .message import Message
from .names import default_consumer_name
from .protocol import (
    DEFAULT_DEAD_LETTER_MAXLEN,
    PRIORITIES,
    Broker,
    ConsumeOptions,
    DeadLetter,
    Delivery,
    Fairness,
    Priority,
    dead_letter_stream,
    entry_time,
)
from .redis_settings import RedisSettings
from .redis_streams import RedisDelivery, RedisStreamsBroker

__all__ = [
    "DEFAULT_DEAD_LETTER_MAXLEN",
    "PRIORITIES",
    "SUBSCRIBED",
    "AlreadySettled",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Command",
    "ConfigError",
    "ConsumeOptions",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "Fairness",
    "LeaseLost",
    "MemoryBroker",
    "Message",
    "PipelineCoalescer",
    "Priority",
    "RedisDelivery",
    "RedisSettings",
    "RedisStreamsBroker",
    "dead_letter_stream",
    "default_consumer_name",
    "entry_time",
]
