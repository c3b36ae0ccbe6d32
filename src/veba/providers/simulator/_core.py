"""`VCenterSimulator`: a seeded, pure (no I/O) generator of vCenter's event stream."""

from __future__ import annotations

import contextlib
import copy
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from veba.events import Event, Kind, vsphere_event
from veba.providers.simulator._inventory import World, build_world
from veba.providers.simulator._operation import Ctx, Operation, SimulationError, Target
from veba.providers.simulator._shapes import JSON, rfc3339
from veba.providers.simulator._vcenter_operations import EXTENDED_EVENT_TYPES, VCENTER_OPERATIONS
from veba.providers.simulator._vm_operations import VM_OPERATIONS

__all__ = ["DEFAULT_SOURCE", "DEFAULT_START", "VCenterSimulator"]

DEFAULT_SOURCE = "https://vcsim.veba.local/sdk"
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

_KINDS: dict[str, Kind] = {"EventEx": "eventex", "ExtendedEvent": "extendedevent"}
_ATTRIBUTES = frozenset(
    {"id", "source", "type", "subject", "time", "specversion", "datacontenttype"}
    | {"vsphereapiversion"}
)
# A trigger emits into the stream, whose keys and order these fields carry.
_STREAM_FIELDS = frozenset(("Key", "ChainId", "CreatedTime"))
OPERATIONS = VM_OPERATIONS + VCENTER_OPERATIONS
_OPS = {op.name: op for op in OPERATIONS}
_BY_SUBJECT: dict[str, list[Operation]] = {}
for _op in OPERATIONS:
    for _subject in _op.subjects:
        _BY_SUBJECT.setdefault(_subject, []).append(_op)


@dataclass
class _Record:
    event_class: str
    data: JSON

    @property
    def subject(self) -> str:
        if self.event_class in _KINDS:
            return str(self.data["EventTypeId"])
        return self.event_class


class VCenterSimulator:
    """A simulated vCenter: inventory, state, and the events its operations emit.

    The same seed and options give the same events: keys, types, data and, with
    the default logical clock, times. A `clock` (say, wall-clock time for a live
    appliance) changes only the times; the rest of the sequence stays the same.

    `emit(n)` returns exactly `n` events; when that cuts an operation, the rest
    is kept and comes first from the next `emit` or `next_events` call.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        datacenters: int = 1,
        clusters_per_dc: int = 2,
        hosts_per_cluster: int = 3,
        vms_per_host: int = 5,
        source: str = DEFAULT_SOURCE,
        instance_uuid: str | None = None,
        first_key: int = 1,
        start_time: datetime = DEFAULT_START,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        sizes = (datacenters, clusters_per_dc, hosts_per_cluster, vms_per_host)
        if min(sizes) < 0 or min(sizes[:3]) < 1:
            raise ValueError("need at least one datacenter, cluster and host; VMs may be 0")
        if first_key < 1:
            raise ValueError("first_key must be >= 1")
        self.seed = seed
        self.source = source
        if instance_uuid is None:
            instance_uuid = str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4))
        self.instance_uuid = instance_uuid
        self._world = build_world(
            random.Random(f"veba-simulator/{seed}/inventory"),
            vcenter_host=urlsplit(source).hostname or "vcsa.lab.local",
            instance_uuid=instance_uuid,
            datacenters=datacenters,
            clusters_per_dc=clusters_per_dc,
            hosts_per_cluster=hosts_per_cluster,
            vms_per_host=vms_per_host,
        )
        self._rng = random.Random(f"veba-simulator/{seed}/events")
        self._clock = clock
        self._next_key = first_key
        self._now = _aware(start_time)  # the logical clock, advanced by seeded steps
        self._last = self._now  # the last time handed out
        self._buffer: list[Event] = []
        self._records: list[_Record] = []  # of the operation running
        self._gap = True  # the next event is the first of an operation

    # -- reading -------------------------------------------------------------------

    @property
    def next_key(self) -> int:
        """The Key the next new event gets (buffered events already have theirs)."""
        return self._next_key

    @property
    def world(self) -> World:
        """The inventory and its current state (read it, do not change it)."""
        return self._world

    @staticmethod
    def event_classes() -> list[str]:
        """Every subject this simulator emits: event classes, and EventTypeIds of
        EventEx and ExtendedEvent events."""
        return sorted(_BY_SUBJECT)

    # -- the stream ------------------------------------------------------------------

    def next_events(self, event_class: str | None = None, **overrides: Any) -> list[Event]:
        """The events of one operation: a random one, or one that emits `event_class`.

        With `event_class`, overrides by data path (`**{"Vm.Name": "web-01"}`) pick
        the target where they identify one (`Vm.Name` on a power-off chooses which
        VM; a VM that is already off is an error), name what an operation creates
        (`Vm.Name` on `VmCreatedEvent`), set `UserName` for the whole operation, and
        otherwise overwrite that field in the `event_class` events.
        Raises `SimulationError` when the simulated vCenter cannot do it.
        """
        head, self._buffer = self._buffer, []
        if event_class is None:
            if overrides:
                raise SimulationError("overrides need an event class")
            return head or self._operation()
        try:
            return head + self._operation(event_class, overrides)
        except BaseException:
            self._buffer = head
            raise

    def emit(self, n: int) -> list[Event]:
        """Exactly `n` events; the rest of a cut operation is buffered for the next call."""
        if n <= 0:
            return []
        events: list[Event] = []
        while len(events) < n:
            events += self.next_events()
        self._buffer = events[n:]
        return events[:n]

    def resume(self, next_key: int, *, at: datetime | None = None) -> None:
        """Continue the stream at `next_key`, as after an appliance restart.

        Keys continue from `next_key`, and ids of VMs created from now on cannot
        clash with earlier ones; the random sequence is reseeded from (seed,
        next_key), so a given checkpoint always continues the same way. The
        inventory state is whatever this simulator holds (after a restart, the
        seed's initial one). The logical clock moves to `at` when given.
        """
        if next_key < 1:
            raise ValueError("next_key must be >= 1")
        self._next_key = next_key
        self._rng = random.Random(f"veba-simulator/{self.seed}/events/{next_key}")
        self._buffer = []
        if at is not None:
            self._now = self._last = _aware(at)

    def sample(self, event_class: str, **overrides: Any) -> Event:
        """One realistic `event_class` event, leaving this simulator untouched.

        Made by a copy of the simulator, which first does what makes the event
        possible (powers a VM on, to have one to power off). Overrides are dotted
        paths into the data (`Vm.Name`, `data.Vm.Name`, `Arguments.0.Value`) or
        CloudEvent attribute names (`subject`); a target that matches them is
        used when there is one, otherwise the fields are simply set.
        The id is not one the stream will use, so a sample is never taken for a
        duplicate of a streamed event.
        """
        fork = self._fork()
        data_overrides, attributes = _split_attributes(overrides)
        subject = fork._resolve(event_class)
        records = fork._sample_records(subject, data_overrides)
        record = next(r for r in records if r.subject == subject)
        event = fork._wrap(record, instance_uuid=f"{self.instance_uuid}/sample")
        if attributes:
            event = Event({**event.attributes, **attributes}, event.data)
        return event

    # -- internals -----------------------------------------------------------------

    def _fork(self) -> VCenterSimulator:
        fork = copy.copy(self)
        fork._world = copy.deepcopy(self._world)
        fork._rng = copy.deepcopy(self._rng)
        fork._buffer = []
        return fork

    def _resolve(self, event_class: str) -> str:
        """A subject; a bare `EventEx`/`ExtendedEvent` becomes one of that kind."""
        if event_class in _BY_SUBJECT:
            return event_class
        if event_class in _KINDS:
            return self._rng.choice([s for s in sorted(_BY_SUBJECT) if _class_of(s) == event_class])
        known = ", ".join(self.event_classes())
        raise SimulationError(f"unknown event class {event_class!r}; known: {known}")

    def _sample_records(self, subject: str, overrides: dict[str, Any]) -> list[_Record]:
        # Prefer the target the overrides name, brought into the state the event
        # needs; else any target, the overrides then simply set on the data.
        for wanted in (overrides, {}):
            try:
                return self._run(subject, dict(overrides), lenient=bool(not wanted))
            except _NoTarget as missing:
                if self._prepare(missing.op, wanted, depth=3):
                    with contextlib.suppress(_NoTarget):
                        return self._run(subject, dict(overrides), lenient=bool(not wanted))
        raise SimulationError(f"cannot make a {subject} in this inventory")

    def _prepare(self, op: Operation, overrides: Mapping[str, Any], *, depth: int) -> bool:
        """Run what gives `op` a target matching `overrides` (power a VM on so that
        it can be powered off), recursively; False if there is no way."""
        prepare = _OPS.get(op.prepare or "")
        if prepare is None or depth == 0:
            return False
        subject = prepare.subjects[-1]
        for _ in range(2):
            try:
                matching, _, _ = self._targets(prepare, subject, overrides, lenient=False)
            except _NoTarget:
                if self._prepare(prepare, overrides, depth=depth - 1):
                    continue
                return False
            ctx = Ctx(self._world, self._rng, self._record)
            self._run_op(prepare, self._rng.choice(matching), ctx)
            return True
        return False

    def _operation(
        self, event_class: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> list[Event]:
        if event_class is None:
            records = self._random()
        else:
            data, attributes = _split_attributes(overrides or {})
            fixed = sorted(_STREAM_FIELDS.intersection(data)) + sorted(attributes)
            if fixed:
                raise SimulationError(f"{', '.join(fixed)} cannot be overridden on streamed events")
            subject = self._resolve(event_class)
            try:
                if data:  # try it on a copy first: a bad override must not leave half an op
                    self._fork()._run(subject, dict(data), lenient=False)
                records = self._run(subject, data, lenient=False)
            except _NoTarget as missing:
                raise SimulationError(str(missing)) from None
        return [self._wrap(r) for r in records]

    def _random(self) -> list[_Record]:
        world, rng = self._world, self._rng
        ops = list(OPERATIONS)
        while ops:
            weights = [op.weight(world) for op in ops]
            if not any(weights):
                break
            op = rng.choices(ops, weights)[0]
            if op.pick is not None:
                target = op.pick(world, rng)
            else:
                candidates = op.candidates(world)
                target = rng.choice(candidates) if candidates else None
            if target is not None:
                return self._run_op(op, target, Ctx(world, rng, self._record))
            ops.remove(op)
        raise SimulationError("no operation is possible in this inventory")

    def _run(self, subject: str, overrides: dict[str, Any], *, lenient: bool) -> list[_Record]:
        """Run an operation that emits `subject`, on a target matching `overrides`;
        the overrides left over are set on the `subject` events."""
        options: list[tuple[Operation, list[Target], dict[str, str], dict[str, Any]]] = []
        first_missing: _NoTarget | None = None
        for op in _BY_SUBJECT[subject]:
            try:
                options.append((op, *self._targets(op, subject, overrides, lenient=lenient)))
            except _NoTarget as missing:
                first_missing = first_missing or missing
        if not options:
            assert first_missing is not None
            raise first_missing
        rng = self._rng
        op, matching, params, rest = options[0] if len(options) == 1 else rng.choice(options)
        user = rest.pop("UserName", None)
        ctx = Ctx(self._world, rng, self._record, None if user is None else str(user), params)
        records = self._run_op(op, rng.choice(matching), ctx)
        for record in records:
            if record.subject == subject:
                for path, value in rest.items():
                    set_path(record.data, path, value)
        return records

    def _targets(
        self, op: Operation, subject: str, overrides: Mapping[str, Any], *, lenient: bool
    ) -> tuple[list[Target], dict[str, str], dict[str, Any]]:
        """The targets of `op` that the overrides select, the operation's parameters
        among the overrides, and the rest of them (to set on the data).

        With `lenient`, selectors that match nothing are just data to set."""
        candidates = [t for t in op.candidates(self._world) if op.accepts(t, subject)]
        if not candidates:
            raise _NoTarget(op, f"no target for {subject} now")
        paths = op.describe(candidates[0], subject).keys()
        selectors = {p: str(v) for p, v in overrides.items() if p in paths}
        params = {
            op.params[p]: str(v) for p, v in overrides.items() if p in op.params and p not in paths
        }
        rest = {p: v for p, v in overrides.items() if p not in paths and p not in op.params}
        matching = [
            t
            for t in candidates
            if all(op.describe(t, subject).get(p) == v for p, v in selectors.items())
        ]
        if matching:
            return matching, params, rest
        if lenient:
            return candidates, params, {**rest, **selectors}
        wanted = ", ".join(f"{p}={v}" for p, v in selectors.items())
        raise _NoTarget(
            op, f"none of the {len(candidates)} that can emit {subject} now has {wanted}"
        )

    def _run_op(self, op: Operation, target: Target, ctx: Ctx) -> list[_Record]:
        saved = (self._next_key, self._now, self._last)
        self._records = []
        self._gap = True
        try:
            op.run(ctx, target)
        except BaseException:
            self._next_key, self._now, self._last = saved
            raise
        return self._records

    def _record(
        self, event_class: str, body: JSON, *, chain: int | None, delay: tuple[float, float]
    ) -> JSON:
        rng = self._rng
        if self._gap:  # time between operations
            self._gap = False
            micros = int(min(rng.expovariate(1 / 3.0), 60.0) * 1e6)
        else:
            micros = rng.randint(int(delay[0] * 1e6), int(delay[1] * 1e6))
        self._now += timedelta(microseconds=micros)
        when = self._now if self._clock is None else _aware(self._clock())
        self._last = max(when, self._last)  # never back in time, whatever the clock does
        key = self._next_key
        self._next_key += 1
        data = {
            "Key": key,
            "ChainId": key if chain is None else chain,
            "CreatedTime": rfc3339(self._last),
            **body,
        }
        self._records.append(_Record(event_class, data))
        return data

    def _wrap(self, record: _Record, *, instance_uuid: str | None = None) -> Event:
        return vsphere_event(
            record.data,
            event_class=record.event_class,
            source=self.source,
            instance_uuid=instance_uuid or self.instance_uuid,
            kind=_KINDS.get(record.event_class, "event"),
        )


class _NoTarget(Exception):
    def __init__(self, op: Operation, message: str) -> None:
        super().__init__(message)
        self.op = op


def _class_of(subject: str) -> str:
    """The govmomi class behind a subject (EventEx and ExtendedEvent go by EventTypeId)."""
    if subject in EXTENDED_EVENT_TYPES:
        return "ExtendedEvent"
    return "EventEx" if "." in subject else subject


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _split_attributes(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Data overrides (a `data.` prefix dropped) and CloudEvent attribute overrides."""
    data: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for path, value in overrides.items():
        if path in _ATTRIBUTES:
            attributes[path] = str(value)
        else:
            data[path.removeprefix("data.")] = value
    return data, attributes


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set `value` at a dotted path (`Vm.Name`, `Arguments.0.Value`), creating
    objects for missing or null intermediate fields."""
    parts = path.split(".")
    try:
        for part in parts[:-1]:
            if isinstance(obj, list):
                index = int(part)
                if obj[index] is None:
                    obj[index] = {}
                obj = obj[index]
            else:
                if obj.get(part) is None:
                    obj[part] = {}
                obj = obj[part]
        if isinstance(obj, list):
            obj[int(parts[-1])] = value
        else:
            obj[parts[-1]] = value
    except (AttributeError, IndexError, TypeError, ValueError):
        raise SimulationError(f"cannot set {path!r}: no such place in the event data") from None
