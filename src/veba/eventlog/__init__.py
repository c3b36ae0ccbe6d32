"""Durable event log and delivery state behind one protocol."""

from veba.eventlog.base import (
    AppendResult,
    Attempt,
    Backlog,
    Checkpoint,
    Delivery,
    DeliveryInfo,
    EventLog,
    EventRecord,
    LogFull,
    LogSize,
    LogUnavailable,
    ReplayTooLarge,
    Route,
    Status,
    SubjectCounts,
)
from veba.eventlog.ownerlock import LogInUse, OwnerLock
from veba.eventlog.sqlite import SQLiteLog

__all__ = [
    "AppendResult",
    "Attempt",
    "Backlog",
    "Checkpoint",
    "Delivery",
    "DeliveryInfo",
    "EventLog",
    "EventRecord",
    "LogFull",
    "LogInUse",
    "LogSize",
    "LogUnavailable",
    "OwnerLock",
    "ReplayTooLarge",
    "Route",
    "SQLiteLog",
    "Status",
    "SubjectCounts",
]
