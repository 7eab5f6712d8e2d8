"""The wire contract the API and the workers share: the task message, the result events,
their values, the parameter vocabulary, the names of the streams they meet on, and the advert
a worker announces of what it serves.

It depends only on attrs, cattrs and orjson, so either service can import it without the
other.
"""

from .advert import InvalidAdvert, WorkerAdvert, decode_advert, encode_advert, presence_group
from .errors import ContractError, InvalidResultEvent, InvalidTask
from .messages import (
    ROLES,
    TASK_FIELDS,
    TASK_PRIORITIES,
    ChatMessage,
    ErrorInfo,
    EventKind,
    ResultEvent,
    Role,
    TaskMessage,
    TaskPriority,
    Usage,
    converter,
    decode_event,
    decode_task,
    encode_event,
    encode_task,
    error_payload,
    event_payload,
    messages_of,
    messages_payload,
    usage_payload,
)
from .parameters import PARAMETERS, ParameterSpec, provider_of, validate_parameters
from .streams import CANCEL_FLAGS, RESULTS_STREAM, TASKS_GROUP, TASKS_STREAM
from .text import NOT_BLANK_PATTERN, is_blank

__all__ = [
    "CANCEL_FLAGS",
    "NOT_BLANK_PATTERN",
    "PARAMETERS",
    "RESULTS_STREAM",
    "ROLES",
    "TASKS_GROUP",
    "TASKS_STREAM",
    "TASK_FIELDS",
    "TASK_PRIORITIES",
    "ChatMessage",
    "ContractError",
    "ErrorInfo",
    "EventKind",
    "InvalidAdvert",
    "InvalidResultEvent",
    "InvalidTask",
    "ParameterSpec",
    "ResultEvent",
    "Role",
    "TaskMessage",
    "TaskPriority",
    "Usage",
    "WorkerAdvert",
    "converter",
    "decode_advert",
    "decode_event",
    "decode_task",
    "encode_advert",
    "encode_event",
    "encode_task",
    "error_payload",
    "event_payload",
    "is_blank",
    "messages_of",
    "messages_payload",
    "presence_group",
    "provider_of",
    "usage_payload",
    "validate_parameters",
]
