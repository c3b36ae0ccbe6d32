"""Durable event log and delivery state behind one protocol."""

from veba.eventlog.base import (
    AppendResult,
    Attempt,
    Delivery,
    DeliveryInfo,
    EventLog,
    EventRecord,
    LogFull,
    ReplayTooLarge,
    Route,
    Status,
)
from veba.eventlog.ownerlock import LogInUse, OwnerLock
from veba.eventlog.sqlite import SQLiteLog

__all__ = [
    "AppendResult",
    "Attempt",
    "Delivery",
    "DeliveryInfo",
    "EventLog",
    "EventRecord",
    "LogFull",
    "LogInUse",
    "OwnerLock",
    "ReplayTooLarge",
    "Route",
    "SQLiteLog",
    "Status",
]
