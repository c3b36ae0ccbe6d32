"""What the API accepts: every request body and bounded parameter, as a model.

FastAPI validates against these before a handler runs and documents them in
`/openapi.json`; a request that does not fit gets a 400 naming the field's
path (`veba.api.errors`). Every integer and list has bounds, so no client value
reaches SQLite out of its range or asks for unbounded work. Bodies in
OpenFaaS's shapes (secrets, function removal, deploys) ignore fields veba does
not use, as OpenFaaS's gateway does (faas-cli sends `namespace`); veba's own
bodies refuse unknown fields, so a typo is not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "MAX_INT64",
    "MAX_REDRIVE_IDS",
    "MAX_REPLAY",
    "MAX_TRIGGER",
    "Backlog",
    "DeliveryId",
    "DeployRequest",
    "EventReplayRequest",
    "EventStory",
    "FrameRows",
    "Limit",
    "RedriveRequest",
    "RemoveFunctionRequest",
    "RemoveSecretRequest",
    "ReplayRequest",
    "SecretRequest",
    "Seq",
    "StorePutRequest",
    "StoryChapter",
    "StreamFilter",
    "TriggerRequest",
]

MAX_INT64 = 2**63 - 1  # what SQLite's integers hold
MAX_ROWS = 10_000  # rows one listing answers with
MAX_REDRIVE_IDS = 10_000
MAX_REPLAY = 100_000  # events one replay request may deliver again
MAX_TRIGGER = 1_000  # simulator operations one trigger request may run
MAX_TYPES = 1_000  # subjects one replay may name
NAME = 253  # longest name of a function, secret or key

Limit = Annotated[int, Query(ge=1, le=MAX_ROWS, description=f"1 to {MAX_ROWS} rows")]
Seq = Annotated[int, Query(ge=0, le=MAX_INT64, description="a log sequence number")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_INT64)]
Time = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False, description="epoch seconds")]
Name = Annotated[str, Field(min_length=1, max_length=NAME)]


# strict: a JSON body's types are taken as sent ("yes" is not true, "5" not 5).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _OpenFaaS(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class RedriveRequest(_Strict):
    """Exactly one of `ids`, `function` or `all: true`."""

    ids: list[Annotated[int, Field(ge=1, le=MAX_INT64)]] | None = Field(
        None, max_length=MAX_REDRIVE_IDS
    )
    function: Name | None = None
    all: bool = False
    dry_run: bool = Field(False, description="only count what would be redriven")


class ReplayRequest(_Strict):
    function: Name
    since: Time | None = None
    until: Time | None = None
    types: list[Name] | None = Field(None, max_length=MAX_TYPES)
    dry_run: bool = Field(False, description="only count what would be replayed")
    force: bool = Field(
        False, description="every event of the range, not only those the subscriber takes"
    )


class EventReplayRequest(_Strict):
    """One logged event again to one function or RouterConfig processor."""

    function: Name
    force: bool = Field(False, description="even if the subscriber's topic or filters refuse it")


# A live stream's filters: each a case-insensitive part of the value (veba.feed).
StreamFilter = Annotated[str, Query(max_length=NAME)]
Backlog = Annotated[int, Query(ge=0, le=500, description="logged events to send first")]
FrameRows = Annotated[int, Query(ge=1, le=5_000, description="rows a frame holds at most")]


class TriggerRequest(_Strict):
    event_class: Name | None = None
    count: int = Field(1, ge=1, le=MAX_TRIGGER)
    overrides: dict[Annotated[str, Field(min_length=1, max_length=NAME)], JsonValue] = Field(
        default_factory=dict, max_length=100
    )


class SecretRequest(_OpenFaaS):
    """OpenFaaS's `{name, value}` / `{name, rawValue}` (base64), or veba's
    `{name, keys: {KEY: base64}}`; `replace` to change an existing one."""

    name: str = Field(max_length=NAME)
    value: str | None = None
    rawValue: str | None = None  # OpenFaaS spells it so
    keys: dict[str, str] | None = Field(None, max_length=1_000)
    replace: bool = False


class RemoveSecretRequest(_OpenFaaS):
    name: str = Field(max_length=NAME)


class RemoveFunctionRequest(_OpenFaaS):
    functionName: str = Field(max_length=NAME)  # OpenFaaS spells it so


class DeployRequest(_OpenFaaS):
    """What `veba up` sends for one function of a stack.yml (`code`: its handler
    folder as base64 tar.gz). Types are checked here; what the values mean
    (a known lang, a subscription, a delivery policy) by the deploy, which names
    the stack field (`functions.NAME.lang`)."""

    name: str | None = Field(None, max_length=NAME)
    service: str | None = Field(None, max_length=NAME)  # OpenFaaS's name for it
    lang: str | None = Field(None, max_length=NAME)
    code: str | None = None
    environment: dict[str, str] | None = Field(None, max_length=1_000)
    secrets: list[str] | None = Field(None, max_length=100)
    labels: dict[str, str] | None = Field(None, max_length=1_000)
    annotations: dict[str, str] | None = Field(None, max_length=1_000)
    topic: str | None = None
    filters: JsonValue = None
    delivery: dict[str, JsonValue] | None = Field(None, max_length=100)
    workers: int | None = Field(None, ge=1, le=64)
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    # VEBA's event shape for this function (v0.7 or v0.8; veba.shapes).
    shape: str | None = Field(None, max_length=NAME)
    # A Knative Service's secrets as variables (`env[].valueFrom.secretKeyRef`,
    # `envFrom[].secretRef`) and its `containerConcurrency`.
    secret_env: dict[str, dict[str, JsonValue]] | None = Field(None, max_length=1_000)
    env_from: list[dict[str, JsonValue]] | None = Field(None, max_length=100)
    concurrency: int | None = Field(None, ge=0, le=10_000)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class StorePutRequest(_Strict):
    value: JsonValue
    ttl: float | None = Field(None, gt=0, allow_inf_nan=False)
    expect_revision: int | None = Field(None, ge=0, le=MAX_INT64)


# -- answers ---------------------------------------------------------------------


class StoryChapter(BaseModel):
    """One thing that happened to an event (`veba.story.Chapter`)."""

    at: float = Field(description="Unix time")
    kind: Literal["received", "logged", "delivery", "attempt", "outcome", "output", "next", "dead"]
    text: str
    function: str | None = Field(None, description="the function or RouterConfig processor")
    delivery: int | None = None
    attempt: int | None = None
    stream: str | None = Field(None, description="output: stdout, stderr or system")
    outcome: str | None = Field(None, description="outcome: ok, error, timeout, crash, transport")
    status: int | None = None
    duration: float | None = Field(None, description="outcome: seconds the attempt took")
    error: str | None = Field(None, description="outcome: the error, scrubbed of secrets")


class EventStory(BaseModel):
    """One event's story in time order: `GET /api/v1/events/{ref}/story`."""

    event_id: str
    seq: int
    source: str
    type: str
    subject: str
    trace_id: str = Field(description="the W3C trace id every delivery of it carries")
    chapters: list[StoryChapter]
