"""`EventLog` on NATS JetStream: `JetStreamLog` (the layout: log.py's docstring)."""

from veba.eventlog.jetstream._wire import JetStreamError
from veba.eventlog.jetstream.log import JetStreamLog

__all__ = ["JetStreamError", "JetStreamLog"]
