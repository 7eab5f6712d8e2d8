"""The broker library: a Broker protocol with Redis Streams and in-memory adapters."""

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
    Broker,
    ConsumeOptions,
    DeadLetter,
    Delivery,
    dead_letter_stream,
)
from .redis_settings import RedisSettings
from .redis_streams import RedisDelivery, RedisStreamsBroker

__all__ = [
    "DEFAULT_DEAD_LETTER_MAXLEN",
    "AlreadySettled",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "ConsumeOptions",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "LeaseLost",
    "MemoryBroker",
    "Message",
    "RedisDelivery",
    "RedisSettings",
    "RedisStreamsBroker",
    "dead_letter_stream",
    "default_consumer_name",
]
