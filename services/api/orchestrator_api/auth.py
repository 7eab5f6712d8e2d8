"""Bearer API keys mapped to tenants."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import attrs

__all__ = ["DEFAULT_TENANT", "KeyRing"]

#: The one tenant when authentication is disabled.
DEFAULT_TENANT = "default"

_BEARER = "bearer "


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@attrs.frozen
class KeyRing:
    """Which tenant an ``Authorization`` header belongs to, in O(1).

    Keys are held only as SHA-256 digests, indexed by their first 8 bytes. A lookup hashes the
    presented key, probes the index (its timing depends on a digest an attacker cannot steer
    toward a valid key), then compares the full digests with ``hmac.compare_digest``.
    """

    _index: Mapping[bytes, tuple[bytes, str]]
    enabled: bool = True

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> KeyRing:
        """From ``(tenant, key)`` pairs; raises ``ValueError`` if one key names two tenants."""
        index: dict[bytes, tuple[bytes, str]] = {}
        for tenant, key in pairs:
            digest = _digest(key)
            known = index.setdefault(digest[:8], (digest, tenant))
            if known != (digest, tenant):
                raise ValueError(f"one key is given to both {known[1]!r} and {tenant!r}")
        return cls(index)

    @classmethod
    def disabled(cls) -> KeyRing:
        """Every request is tenant ``default``."""
        return cls({}, enabled=False)

    def __len__(self) -> int:
        return len(self._index)

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer <key>`` value, or None if not a known key."""
        if not self.enabled:
            return DEFAULT_TENANT
        if authorization is None or authorization[:7].lower() != _BEARER:
            return None
        digest = _digest(authorization[7:].strip())
        entry = self._index.get(digest[:8])
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        return entry[1]
