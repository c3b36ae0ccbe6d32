"""The inspection queries: what every node reads of the log as it stands."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from datetime import datetime

from nats.aio.msg import Msg

from veba.eventlog.base import (
    Backlog,
    Checkpoint,
    DeliveryInfo,
    EventRecord,
    LogSize,
    Status,
    SubjectCounts,
)
from veba.eventlog.jetstream._base import LogBase, delivery_id_of, received
from veba.eventlog.jetstream._names import token, untoken
from veba.eventlog.jetstream._state import DeliveryState
from veba.eventlog.jetstream._tally import REBUILD_EVERY, Tally, notice_ids
from veba.eventlog.jetstream._wire import scan, seq_of
from veba.events import Event

__all__ = ["Queries"]


class Queries(LogBase):
    # How far apart the clocks of the servers that stored an event and its
    # deliveries' states may be, for `deliveries(event_id=)` (NTP keeps them
    # within milliseconds).
    clocks_apart = 10.0

    async def _all_deliveries(
        self, subscription: str | None, *, since: float | None = None
    ) -> list[DeliveryState]:
        """Every delivery known: those with a state, and open ones never leased.
        With `since`, only the states written from then on."""
        names = self.names
        by_id = {}
        async for _, state in self._all_states(since=since):
            if subscription is None or state.subscription == subscription:
                by_id[state.id] = state
        subjects = (
            names.all(names.deliveries)
            if subscription is None
            else names.delivery_subject(subscription)
        )
        async for msg in self._walk(names.deliveries, subjects):
            headers = msg.headers or {}
            delivery_id = delivery_id_of(msg)
            if delivery_id not in by_id:
                sub = names.subscription_of(headers.get("Nats-Subject", ""))
                by_id[delivery_id] = DeliveryState.pending_from(delivery_id, sub, headers)
        return sorted(by_id.values(), key=lambda s: s.id, reverse=True)

    async def events(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        subject: str | None = None,
        newest_first: bool = False,
    ) -> list[EventRecord]:
        wanted = None if subject is None else token(subject)

        def record(msg: Msg) -> EventRecord | None:
            if wanted is not None and (msg.headers or {}).get("Veba-Subject") != wanted:
                return None
            return EventRecord(seq_of(msg), received(msg), Event.from_json(msg.data))

        if limit <= 0:
            return []
        if not newest_first:
            out: list[EventRecord] = []
            async with contextlib.aclosing(self._events(start=after_seq + 1)) as found:
                async for msg in found:
                    if (rec := record(msg)) is not None:
                        out.append(rec)
                        if len(out) >= limit:
                            break
            return out
        # Newest first: read windows back from the end, each wider than the last.
        upto = (await self._jetstream().stream_info(self.names.events)).state.last_seq
        newest: list[EventRecord] = []
        window = max(limit * 2, 64)
        while upto > after_seq and len(newest) < limit:
            start = max(after_seq + 1, upto - window + 1)
            part: list[EventRecord] = []
            async with contextlib.aclosing(self._events(start=start)) as found:
                async for msg in found:
                    if seq_of(msg) > upto:
                        break
                    if (rec := record(msg)) is not None:
                        part.append(rec)
            newest.extend(reversed(part))
            upto, window = start - 1, window * 4
        return newest[:limit]

    async def event(self, event_id: str) -> EventRecord | None:
        names = self.names
        msg = await self._get(names.events, {"seq": 1, "next_by_subj": names.event_by_id(event_id)})
        if msg is None:
            return None
        return EventRecord(seq_of(msg), received(msg), Event.from_json(msg.data))

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: Status | None = None,
        event_id: str | None = None,
        limit: int = 100,
        with_history: bool = False,
    ) -> list[DeliveryInfo]:
        if limit <= 0:
            return []
        if status == "dead":
            found = await self._dead_letters(subscription, event_id, limit)
        else:
            since = None if event_id is None else await self._states_since(event_id)
            found = [
                s
                for s in await self._all_deliveries(subscription, since=since)
                if (status is None or s.status == status)
                and (event_id is None or s.event_id == event_id)
            ]
        return [s.info(with_history=with_history) for s in found[:limit]]

    async def _dead_letters(
        self, subscription: str | None, event_id: str | None, limit: int
    ) -> list[DeliveryState]:
        """The newest dead letters, from the DLQ (what a dead letter is) and
        their states: not every state the log holds, which on a busy log are
        millions to its few dead letters."""
        names = self.names
        subjects = names.all(names.dlq) if subscription is None else names.dlq_subject(subscription)
        ids: list[int] = []
        dead = scan(
            self._jetstream(), self._conn(), names.dlq, subjects=subjects, headers_only=True
        )
        async with contextlib.aclosing(dead) as found:
            async for msg in found:
                headers = msg.headers or {}
                if event_id is None or untoken(headers.get("Veba-Event-Id", "")) == event_id:
                    ids.append(int(headers["Veba-Delivery"]))
        newest = sorted(set(ids), reverse=True)
        out: list[DeliveryState] = []
        for at in range(0, len(newest), limit):  # a dead letter redriven meanwhile: read on
            states = await self._read_states(newest[at : at + limit])
            # Not dead (yet, or any more): being written to the DLQ, or redriven.
            out.extend(s for s in states if s is not None and s.status == "dead")
            if len(out) >= limit:
                break
        return out[:limit]

    async def _states_since(self, event_id: str) -> float | None:
        """When to read an event's delivery states from: every one was written
        after the first event with that id was stored (by the servers' clocks,
        with a margin); None (all of them) when no such event is logged."""
        names = self.names
        msg = await self._get(names.events, {"seq": 1, "next_by_subj": names.event_by_id(event_id)})
        stamp = None if msg is None else (msg.headers or {}).get("Nats-Time-Stamp")
        if stamp is None:
            return None
        return datetime.fromisoformat(stamp).timestamp() - self.clocks_apart

    async def delivery(self, delivery_id: int) -> DeliveryInfo | None:
        state = await self._state(delivery_id)
        if state is None:  # never leased: its message, if it is still open
            names = self.names
            msg = await self._get(names.deliveries, {"seq": delivery_id})
            if msg is None:
                return None
            sub = names.subscription_of((msg.headers or {}).get("Nats-Subject", ""))
            state = DeliveryState.pending_from(delivery_id, sub, msg.headers or {})
        return state.info()

    async def counts(self) -> dict[str, dict[str, int]]:
        """From this node's tally of the states (what was written since it last
        looked, _tally.py), plus the open deliveries that have none yet (never
        leased, or a first lease's state lost): the work queue's count of each
        subscription's subject less its open states. Not one read per open
        delivery, as listing them takes: a backlog of a million is counted by
        the server. A delivery settled between the two reads may be counted
        open for that moment."""
        names = self.names
        async with self._tally_lock:
            out = (await self._tallied()).counts()
        open_states = Counter(
            {sub: got.get("pending", 0) + got.get("leased", 0) for sub, got in out.items()}
        )
        info = await self._jetstream().stream_info(
            names.deliveries, subjects_filter=names.all(names.deliveries)
        )
        for subject, queued in (info.state.subjects or {}).items():
            sub = names.subscription_of(subject)
            if (stateless := queued - open_states[sub]) > 0:
                by_status = out.setdefault(sub, {})
                by_status["pending"] = by_status.get("pending", 0) + stateless
        return out

    async def _tallied(self) -> Tally:
        """This node's tally brought up to date: the states written and the
        notices of deleted ones published since it last looked; read anew from
        the start when it is due (`REBUILD_EVERY`) or has missed notices."""
        names, js = self.names, self._jetstream()
        gone = (await js.stream_info(names.gone)).state
        tally = self._tally
        if (
            tally is None
            or time.monotonic() - tally.built > REBUILD_EVERY
            or gone.first_seq > tally.gone_seq + 1  # notices it never read have expired
        ):
            tally = Tally()
            tally.built = time.monotonic()
            # What these notices name is deleted already: the full read won't find it.
            tally.gone_seq = gone.last_seq
        # Kept as it goes: a read that fails part way (a pull unanswered on a
        # busy server) goes on from there at the next call, not from the start,
        # so on a log too large to read in one go the calls still get there.
        self._tally = tally
        upto = (await js.stream_info(names.states)).state.last_seq
        if upto > tally.states_seq:
            async for seq, state in self._all_states(start=tally.states_seq + 1, upto=upto):
                tally.fold(state.id, state.subscription, state.status)
                tally.states_seq = seq
            tally.states_seq = upto
        if gone.last_seq > tally.gone_seq:
            notices = scan(
                js, self._conn(), names.gone, start=tally.gone_seq + 1, upto=gone.last_seq
            )
            async with contextlib.aclosing(notices) as found:
                async for msg in found:
                    for delivery_id in notice_ids(msg.data):
                        tally.forget(delivery_id)
            tally.gone_seq = gone.last_seq
        return tally

    async def backlog(self) -> dict[str, Backlog]:
        """Open deliveries per subscription from the work queue's subject counts,
        the oldest from each one's first message, dead letters from the DLQ's."""
        names, js = self.names, self._jetstream()
        found: dict[str, Backlog] = {}
        info = await js.stream_info(names.deliveries, subjects_filter=names.all(names.deliveries))
        for subject, n in (info.state.subjects or {}).items():
            first = await self._get(names.deliveries, {"seq": 1, "next_by_subj": subject})
            oldest = None if first is None else float((first.headers or {})["Veba-Created"])
            found[names.subscription_of(subject)] = Backlog(n, oldest)
        info = await js.stream_info(names.dlq, subjects_filter=names.all(names.dlq))
        for subject, n in (info.state.subjects or {}).items():
            sub = names.subscription_of(subject)
            open_ = found.get(sub, Backlog())
            found[sub] = Backlog(open_.open, open_.oldest, n)
        return found

    async def size(self) -> LogSize:
        names, js = self.names, self._jetstream()
        streams = (names.events, names.deliveries, names.dlq, names.states, names.routed)
        infos = [await js.stream_info(s) for s in (*streams, f"KV_{names.checkpoints}")]
        return LogSize(sum(i.state.bytes for i in infos), 0)

    async def subject_counts(self, after_seq: int = 0) -> SubjectCounts:
        upto = (await self._jetstream().stream_info(self.names.events)).state.last_seq
        counts: Counter[tuple[str, str]] = Counter()
        if upto > after_seq:
            found = self._events(start=after_seq + 1, headers_only=True)
            async with contextlib.aclosing(found) as messages:
                async for msg in messages:
                    if seq_of(msg) > upto:
                        break
                    headers = msg.headers or {}
                    counts[untoken(headers["Veba-Subject"]), untoken(headers["Veba-Type"])] += 1
        return SubjectCounts(upto, tuple((s, t, n) for (s, t), n in sorted(counts.items())))

    async def checkpoints(self) -> list[Checkpoint]:
        stream = f"KV_{self.names.checkpoints}"
        found: list[Checkpoint] = []
        async with contextlib.aclosing(scan(self._jetstream(), self._conn(), stream)) as entries:
            async for msg in entries:
                if msg.data and "KV-Operation" not in (msg.headers or {}):
                    value = json.loads(msg.data)
                    found.append(Checkpoint(value["name"], value["value"], value["updated"]))
        return sorted(found, key=lambda c: c.name)
