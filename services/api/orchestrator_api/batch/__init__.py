"""The Files and Batches APIs' domain: the batch store protocol and its adapters, the
runner that turns a batch's lines into tasks, and the JSONL line formats."""

from .memory import MemoryBatchStore
from .model import BatchRecord, BatchStatus, FileInfo, LineResult, PendingLine
from .protocol import BatchStore
from .redis import RedisBatchStore
from .runner import BATCH_PRIORITY, BatchRunner

__all__ = [
    "BATCH_PRIORITY",
    "BatchRecord",
    "BatchRunner",
    "BatchStatus",
    "BatchStore",
    "FileInfo",
    "LineResult",
    "MemoryBatchStore",
    "PendingLine",
    "RedisBatchStore",
]
