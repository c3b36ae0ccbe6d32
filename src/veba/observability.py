"""Prometheus metrics and structured logging for the appliance."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest

from veba.eventlog.base import Delivery
from veba.targets.base import Result

__all__ = ["Metrics", "configure_logging"]


class Metrics:
    """One registry per appliance, so several appliances can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "veba_events_ingested", "Events accepted into the log", ["via"], registry=self.registry
        )
        self.duplicates = Counter(
            "veba_events_duplicate", "Events ignored as duplicates", ["via"], registry=self.registry
        )
        self.rejected = Counter(
            "veba_events_rejected", "Requests refused as malformed", ["via"], registry=self.registry
        )
        self.deliveries = Counter(
            "veba_deliveries",
            "Delivery attempts by outcome (delivered, retried, dead)",
            ["function", "outcome"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], Counter] = {}

    def observe_delivery(
        self, function: str, outcome: str, result: Result, delivery: Delivery | None = None
    ) -> None:
        key = (function, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.deliveries.labels(function, outcome)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def configure_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    """structlog for the appliance's own lines; stdlib loggers go the same way."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
