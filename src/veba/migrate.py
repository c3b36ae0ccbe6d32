"""`veba migrate`: a stopped appliance's state, from its data directory onto
NATS JetStream, so a cluster of nodes (`veba serve --event-log nats://...`)
can take over where it stopped.

What is copied, each through the public protocols of both sides (the
backends `veba.backends` names):

- deployed functions (definition, code, paused flag): `FileFunctionRecords`
  to `JetStreamFunctionRecords`;
- secrets, as ciphertext: `FileSecretBlobs` to `JetStreamSecretBlobs` (the
  key, `secret.key`, never goes through NATS: the operator copies it);
- the functions' store, every live entry with the time it has left (its
  revisions are new ones): `SQLiteStore` to `JetStreamStore`;
- the pending work: every event with an open delivery (pending, leased or
  waiting to retry) is appended with exactly those subscriptions as its route,
  and every dead letter is made dead again (appended, leased, and `dead`);
  provider checkpoints too. JetStreamLog dedups on (source, id), so a second
  run appends nothing twice.

What is not: delivered events (the cluster's log starts with the work left),
attempt histories (an open delivery starts again at attempt 1; a dead letter
keeps its last failure only), when an event was received (the append's time),
and retry delays (a retrying delivery is offered at once).

The appliance must be stopped: the data directory's lock is held throughout,
as `veba serve` holds it, so neither starts while the other runs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from veba.eventlog import LogInUse, OwnerLock, SQLiteLog
from veba.eventlog.base import Attempt, DeliveryInfo
from veba.eventlog.sqlite_store import SQLiteStore
from veba.functionrecords import FileFunctionRecords
from veba.secrets import FileSecretBlobs

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.errors import APIError

    from veba.eventlog.jetstream import JetStreamLog
    from veba.events import Event
    from veba.functionrecords import FunctionRecords
    from veba.natsurl import NatsLocation
    from veba.secrets import SecretBlobs
    from veba.store import Store

__all__ = ["MigrateError", "Migration", "migrate"]

_APPEND_BATCH = 500  # events per JetStream append
_LEASE_BATCH = 500  # deliveries per lease while finding the dead letters
_LEASE_TTL = 600.0  # long enough to place every dead letter of a subscription
_ALL = 1 << 62  # "no limit" for the protocols' list calls


class MigrateError(RuntimeError):
    """A refusal (appliance running, nothing to migrate, target in use); the
    message says why in one line."""


@dataclass
class Migration:
    """What was (with `dry_run`: would be) copied, kind by kind."""

    data_dir: Path
    target: str
    dry_run: bool = False
    functions: int = 0
    paused: int = 0
    skipped_functions: list[str] = field(default_factory=list)  # "name: why"
    secrets: int = 0
    store_entries: int = 0
    namespaces: int = 0
    events: int = 0  # with an open delivery or a dead letter
    events_there: int = 0  # in the target already (a second run)
    open_deliveries: int = 0
    dead_letters: int = 0  # found in the appliance
    dead_placed: int = 0  # made dead in the target now
    dead_as_open: int = 0  # a dead letter beside an open delivery to the same function
    checkpoints: int = 0

    def lines(self) -> list[str]:
        """One line per kind, for the operator."""
        done = "would copy" if self.dry_run else "copied"
        paused = f" ({self.paused} paused)" if self.paused else ""
        skipped = f"; {len(self.skipped_functions)} NOT copied" if self.skipped_functions else ""
        lines = [f"functions: {done} {self.functions}{paused}{skipped}"]
        lines += [f"  not copied: {why}" for why in self.skipped_functions]
        secrets = f"secrets: {done} {self.secrets} (encrypted)"
        if self.secrets:
            secrets += (
                f"; copy {self.data_dir / 'secret.key'} into every node's data directory"
                " (as secret.key, mode 0600): NATS never holds the key"
            )
        lines.append(secrets)
        lines.append(
            f"store: {done} {self.store_entries} entries in {self.namespaces} namespaces"
            " (each with the time it had left; revisions are new)"
        )
        there = f" ({self.events_there} there already)" if self.events_there else ""
        lines.append(
            f"events: {done} {self.events} with open deliveries or dead letters{there};"
            f" {self.open_deliveries} open deliveries"
        )
        dead = f"dead letters: {self.dead_letters} found"
        if not self.dry_run:
            dead += f", {self.dead_placed} made dead now"
        if self.dead_as_open:
            dead += (
                f"; {self.dead_as_open} left pending: the same event had an open delivery"
                " to the same function, and the JetStream log keeps one of them"
            )
        lines.append(dead)
        lines.append(f"checkpoints: {done} {self.checkpoints}")
        return lines


@dataclass
class _Work:
    """The appliance's pending work: events by seq, each with its open and dead
    subscriptions, and the last failure of each dead letter."""

    events: dict[int, Event] = field(default_factory=dict)
    open: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    dead: dict[int, list[DeliveryInfo]] = field(default_factory=lambda: defaultdict(list))

    def route(self, seq: int) -> list[str]:
        dead = {info.subscription for info in self.dead.get(seq, ())}
        return sorted(self.open.get(seq, set()) | dead)


async def migrate(
    data_dir: Path,
    location: NatsLocation,
    *,
    replicas: int = 1,
    dry_run: bool = False,
    force: bool = False,
) -> Migration:
    """Copy the appliance in `data_dir` onto `location` (see the module's
    docstring); `MigrateError` for a refusal, before anything is written."""
    log_path = data_dir / "events.db"
    if not log_path.is_file():
        raise MigrateError(f"{data_dir} holds no appliance (no events.db): nothing to migrate")
    try:
        lock = OwnerLock.acquire(log_path)
    except LogInUse as exc:
        in_use = str(exc).partition(";")[0]
        raise MigrateError(f"{in_use}; stop it first: migrate copies a stopped appliance") from None
    try:
        return await _migrate(data_dir, log_path, lock, location, replicas, dry_run, force)
    finally:
        lock.release()


async def _migrate(
    data_dir: Path,
    log_path: Path,
    lock: OwnerLock,
    location: NatsLocation,
    replicas: int,
    dry_run: bool,
    force: bool,
) -> Migration:
    from nats.js.errors import APIError

    from veba.eventlog.jetstream import JetStreamLog
    from veba.jetstream import JetStreamFunctionRecords, JetStreamSecretBlobs, JetStreamStore
    from veba.natsurl import connect

    report = Migration(data_dir=data_dir, target=str(location), dry_run=dry_run)
    client, js = await connect(location, client_name="veba-migrate", first_connect_timeout=10)
    source = SQLiteLog(log_path, lock=lock)
    try:
        await source.open()  # as `veba serve` would: its schema brought up to date
        prefix = location.name
        taken = await _functions_there(js, prefix, replicas)
        if taken and not force:
            shown = ", ".join(taken[:5]) + (", ..." if len(taken) > 5 else "")
            raise MigrateError(
                f"{location} holds {len(taken)} functions already ({shown}): another"
                " cluster's, or a migration done before; --force to copy over them"
            )
        records = FileFunctionRecords(data_dir / "functions")
        blobs = FileSecretBlobs(data_dir / "secrets")
        store = SQLiteStore(source)
        work = await _pending_work(source)
        checkpoints = await source.checkpoints()
        if dry_run:
            await _copy_functions(report, records, None)
            await _copy_secrets(report, blobs, None)
            await _copy_store(report, store, None)
            _count_work(report, work)
            report.checkpoints = len(checkpoints)
            return report
        target_log = JetStreamLog(location.servers, name=prefix, replicas=replicas, client=client)
        try:
            await target_log.open()  # first: a refusal (too many replicas) copies nothing
        except APIError as exc:
            raise MigrateError(
                f"NATS at {location} refused the log's streams: {_said(exc)}"
            ) from None
        try:
            functions = JetStreamFunctionRecords(js, prefix, replicas=replicas)
            await _copy_functions(report, records, functions)
            await _copy_secrets(report, blobs, JetStreamSecretBlobs(js, prefix, replicas=replicas))
            await _copy_store(report, store, JetStreamStore(js, prefix, replicas=replicas))
            await _copy_work(report, work, target_log)
            for checkpoint in checkpoints:  # after the events they follow
                await target_log.append(
                    [], route=_no_route, checkpoint=(checkpoint.name, checkpoint.value)
                )
            report.checkpoints = len(checkpoints)
        except APIError as exc:
            raise MigrateError(
                f"NATS at {location}: {_said(exc)}; what was copied stays: run again with --force"
            ) from None
        finally:
            await target_log.close()
        return report
    finally:
        await source.close()
        await client.drain()


def _said(exc: APIError) -> str:
    return exc.description or str(exc)


def _no_route(event: Event) -> Sequence[str]:
    return ()


async def _functions_there(js: JetStreamContext, prefix: str, replicas: int) -> list[str]:
    """The functions the target holds, without making its bucket if it has none
    (a dry run writes nothing)."""
    from nats.js.errors import BucketNotFoundError

    from veba.jetstream import JetStreamFunctionRecords
    from veba.jetstream._buckets import bucket_name

    try:
        await js.key_value(bucket_name(prefix, "functions"))
    except BucketNotFoundError:
        return []
    return sorted(await JetStreamFunctionRecords(js, prefix, replicas=replicas).all())


async def _pending_work(log: SQLiteLog) -> _Work:
    """Every open delivery and dead letter, with its event. Opening the log has
    made leased deliveries pending (their holder is gone), so open is pending."""
    work = _Work()
    for subscription, statuses in (await log.counts()).items():
        for status in ("pending", "leased", "dead"):
            count = statuses.get(status, 0)
            if not count:
                continue
            found = await log.deliveries(
                subscription=subscription,
                status=status,
                limit=count,
                with_history=status == "dead",  # its last failure goes with it
            )
            for info in found:
                if status == "dead":
                    work.dead[info.seq].append(info)
                else:
                    work.open[info.seq].add(subscription)
    for seq in sorted(set(work.open) | set(work.dead)):
        (record,) = await log.events(after_seq=seq - 1, limit=1)
        work.events[seq] = record.event
    return work


def _count_work(report: Migration, work: _Work) -> None:
    report.events = len(work.events)
    report.open_deliveries = sum(len(subs) for subs in work.open.values())
    report.dead_letters = sum(len(infos) for infos in work.dead.values())
    report.dead_as_open = sum(
        1
        for seq, infos in work.dead.items()
        for info in infos
        if info.subscription in work.open.get(seq, set())
    )


# The copies below write to `target`, or only count with None (a dry run).


async def _copy_functions(
    report: Migration, source: FunctionRecords, target: FunctionRecords | None
) -> None:
    for name, record in (await source.all()).items():
        code = None
        if not record.code_hash:  # FileFunctionRecords: a function.json it could not read
            why = "its definition cannot be read"
        elif (code := await source.code(name, record.code_hash)) is None:
            why = f"its code {record.code_hash} is not kept"
        if code is None:
            report.skipped_functions.append(f"{name}: {why}")
            continue
        if target is not None:
            await target.save(name, record.definition, code)
            await target.set_paused(name, record.paused)
        report.functions += 1
        report.paused += record.paused


async def _copy_secrets(report: Migration, source: SecretBlobs, target: SecretBlobs | None) -> None:
    for name in await source.names():
        blob = await source.read(name)
        if blob is None:  # gone meanwhile: it cannot be, the appliance is stopped
            continue
        if target is not None:
            await target.write(name, blob, replace=True)
        report.secrets += 1


async def _copy_store(report: Migration, source: Store, target: Store | None) -> None:
    for namespace in await source.namespaces():
        copied = 0
        for entry in await source.list(namespace, limit=_ALL):
            ttl = None
            if entry.expires_at is not None:
                ttl = entry.expires_at - time.time()
                if ttl <= 0:
                    continue  # expired while we copied
            if target is not None:
                await target.put(namespace, entry.key, entry.value, ttl=ttl)
            copied += 1
        report.namespaces += copied > 0
        report.store_entries += copied


async def _copy_work(report: Migration, work: _Work, target: JetStreamLog) -> None:
    """Append the events in log order, each routed to its open and dead
    subscriptions; then make the dead ones dead."""
    _count_work(report, work)
    report.events = 0  # those appended now, then; the others are there already
    seqs = sorted(work.events)
    routes = {(work.events[s].source, work.events[s].id): work.route(s) for s in seqs}

    def route(event: Event) -> Sequence[str]:
        return routes[(event.source, event.id)]

    for at in range(0, len(seqs), _APPEND_BATCH):
        batch = [work.events[s] for s in seqs[at : at + _APPEND_BATCH]]
        result = await target.append(batch, route=route)
        report.events += result.accepted
        report.events_there += result.duplicates
    # The dead letters to place, by subscription: (source, id) -> their last failures.
    wanted: dict[str, dict[tuple[str, str], Attempt]] = defaultdict(dict)
    for seq, infos in work.dead.items():
        event = work.events[seq]
        for info in infos:
            if info.subscription not in work.open.get(seq, set()):
                wanted[info.subscription][(event.source, event.id)] = _last_failure(info)
    for subscription, failures in sorted(wanted.items()):
        report.dead_placed += await _make_dead(target, subscription, failures)


async def _make_dead(
    log: JetStreamLog, subscription: str, failures: dict[tuple[str, str], Attempt]
) -> int:
    """Lease the subscription's open deliveries until each of `failures` is
    found, make those dead and give the others back untouched. A dead letter
    not found is dead in the target already (a second run), or was never
    appended. The cluster must not be running: its nodes would lease them too."""
    left = dict(failures)
    others: list[int] = []
    placed = 0
    try:
        while left:
            leased = await log.lease(subscription, _LEASE_BATCH, _LEASE_TTL)
            if not leased:
                break
            for delivery in leased:
                failure = left.pop((delivery.event.source, delivery.event.id), None)
                if failure is None:
                    others.append(delivery.id)
                else:
                    await log.dead(delivery.id, failure)
                    placed += 1
    finally:
        await log.release(others)
    return placed


def _last_failure(info: DeliveryInfo) -> Attempt:
    """The dead letter's last attempt, as the appliance recorded it."""
    if info.history:
        return info.history[-1]
    when = info.finished or info.created
    return Attempt(info.attempts, when, when, "error", info.last_status or 0, info.last_error)
