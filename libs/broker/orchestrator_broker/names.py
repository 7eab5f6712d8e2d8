"""Consumer names: unique per process, stable across restarts of the same container."""

from __future__ import annotations

import os
import socket


def default_consumer_name(prefix: str = "") -> str:
    """``[prefix-]<hostname>-<pid>``.

    Unique among the processes of one host. In a container the hostname is the container's
    and the pid is usually 1, so a restarted container comes back under the same name and
    drains the deliveries its previous life left pending before reading new ones.
    """
    base = f"{socket.gethostname()}-{os.getpid()}"
    return f"{prefix}-{base}" if prefix else base
