"""Where one appliance's log lives in a NATS account: every stream, consumer,
subject and bucket starts with the appliance's NAME, so several share one NATS.

Subscription names, event sources and ids are free text; in a subject or a
name they become tokens (`token`): kept as they are when they are plain
(letters, digits, `-`, `_`), else `=` and their URL-safe base64, which NATS
takes in subjects, stream and consumer names and KV keys alike.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

__all__ = ["Names", "token", "untoken"]

_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def token(text: str) -> str:
    """`text` as one subject token (and a valid stream, consumer or KV key name)."""
    if _PLAIN.fullmatch(text):
        return text
    return "=" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    if not tok.startswith("="):
        return tok
    body = tok[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.prefix):
            raise ValueError(
                f"NATS name {self.prefix!r}: 1-32 letters, digits, '-' or '_'"
                " (it starts every stream, subject and bucket of this appliance)"
            )

    # Events: one message each, its subject unique to (source, id).
    @property
    def events(self) -> str:
        return f"{self.prefix}_events"

    def event_subject(self, source: str, event_id: str) -> str:
        return f"{self.prefix}.events.{token(source)}.{token(event_id)}"

    def event_by_id(self, event_id: str) -> str:
        return f"{self.prefix}.events.*.{token(event_id)}"

    # Open deliveries (a work queue): one subject per subscription.
    @property
    def deliveries(self) -> str:
        return f"{self.prefix}_deliveries"

    def delivery_subject(self, subscription: str) -> str:
        return f"{self.prefix}.deliveries.{token(subscription)}"

    def consumer(self, subscription: str) -> str:
        return token(subscription)

    # Dead letters: one subject per subscription.
    @property
    def dlq(self) -> str:
        return f"{self.prefix}_dlq"

    def dlq_subject(self, subscription: str) -> str:
        return f"{self.prefix}.dlq.{token(subscription)}"

    # Delivery state (attempts, history, status): the last message per delivery id.
    @property
    def states(self) -> str:
        return f"{self.prefix}_states"

    def state_subject(self, delivery_id: int) -> str:
        return f"{self.prefix}.states.{delivery_id}"

    # Notices of deleted states (ids), for the tallies counts() keeps (_tally.py).
    @property
    def gone(self) -> str:
        return f"{self.prefix}_gone"

    @property
    def gone_subject(self) -> str:
        return f"{self.prefix}.gone.states"

    # Which events' deliveries were made (router marks), and how far every
    # event's deliveries are known made (the router's watermark, a KV bucket).
    @property
    def routed(self) -> str:
        return f"{self.prefix}_routed"

    @property
    def routed_subject(self) -> str:
        return f"{self.prefix}.routed.marks"

    @property
    def router(self) -> str:
        return f"{self.prefix}-router"

    def delivery_msg_id(self, seq: int, subscription: str) -> str:
        """One delivery per (event, subscription): the deliveries stream drops a
        second within its duplicate window, whoever publishes it."""
        return f"{seq}.{token(subscription)}"

    # Provider checkpoints: a KV bucket.
    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}-checkpoints"

    def all(self, stream: str) -> str:
        """The subjects of one of the streams above."""
        kind = stream.removeprefix(f"{self.prefix}_")
        return f"{self.prefix}.{kind}.>"

    def subscription_of(self, subject: str) -> str:
        """The subscription of a deliveries or dlq subject."""
        return untoken(subject.rsplit(".", 1)[1])
