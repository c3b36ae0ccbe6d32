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
    """structlog for the appliance's own lines; stdlib loggers go the same way.

    Either kind of line about an event carries its `veba.tracing.EventScope`
    (``event_id``, ``function``, ``delivery_id``, ``attempt``): as keys of the
    JSON object with `json_logs`, else as ``key=value`` after the message.
    """
    from veba.tracing import ScopeFilter, add_event_scope

    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # JSON says "message", not structlog's "event": here an event is a CloudEvent.
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.EventRenamer("message"), structlog.processors.JSONRenderer()]
        if json_logs
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_event_scope,
            structlog.stdlib.add_log_level,
            stamp,
            *renderers,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScopeFilter())
    if json_logs:
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    *renderers,
                ],
                foreign_pre_chain=[
                    structlog.stdlib.add_logger_name,
                    structlog.stdlib.add_log_level,
                    stamp,
                    add_event_scope,
                ],
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(scope_text)s")
        )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )
