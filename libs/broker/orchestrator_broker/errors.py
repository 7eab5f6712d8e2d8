"""The broker's exceptions: one root, and the cases a caller can act on."""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error raised by a broker adapter."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; the operation may succeed later.

    A publish that raises this was *not* accepted: the caller must not report success.
    """


class DecodeError(BrokerError):
    """An entry on a stream is not a message this library wrote (corrupt or foreign)."""


class AlreadySettled(BrokerError):
    """A delivery was acked, nacked or dead-lettered already; each is settled once."""


class LeaseLost(BrokerError):
    """The delivery is no longer pending for this consumer (it was reclaimed by another)."""


class ConfigError(BrokerError, ValueError):
    """A broker setting is missing or malformed."""
