"""The names both services must agree on to meet: the two streams and their readers.

Each is a default; ``REDIS_STREAM_ID``, ``REDIS_RESULTS_STREAM_ID`` and ``CONSUMER_GROUP``
override them, and then they must be set alike on the API and the workers.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CANCEL_FLAGS", "RESULTS_STREAM", "TASKS_GROUP", "TASKS_STREAM"]

#: The stream the API publishes ``TaskMessage``s on and the workers read.
TASKS_STREAM: Final = "tasks"
#: The stream the workers publish ``ResultEvent``s on and the API replicas read.
RESULTS_STREAM: Final = "results"
#: The consumer group all workers share on the tasks stream (each task goes to one worker).
TASKS_GROUP: Final = "workers"
#: The broker's flag group of cancelled tasks: the API raises a task's id there (see
#: ``Broker.raise_flag``), the workers check it when they take a task up and watch it for
#: the tasks they run.
CANCEL_FLAGS: Final = "cancel"
