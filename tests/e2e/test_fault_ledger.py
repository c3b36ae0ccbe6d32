"""The fault-injection ledger: 20,000 events from four concurrent senders, ten
SIGKILLs of the appliance and ten of function workers at random moments, and
the books must balance.

Each sender keeps a ledger of what got a 2xx (acknowledged) and what did not.
The appliance restarts on the same data dir (and port) after each kill. Then:

- every acknowledged event reaches every function subscribed to it;
- duplicates are at most the deliveries in flight at the kills: those the log
  held as leased at each appliance kill (read from the dead appliance's log, as
  test_crash.py does), plus one per worker kill (a worker runs one call at a
  time; only that call can have done its work without its answer arriving);
- a request that got no 2xx has all or none of its events in the log;
- nothing is dead-lettered, and no function gets an event it did not subscribe to.

The seed is random and printed in every failure; `VEBA_FAULT_SEED=N` replays
the same kill schedule and request mix (the machine's timing still varies).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ApplianceProcess, deploy_recorders, wait_for
from veba.events import BATCH_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE

SAMPLE = json.loads(
    (Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json").read_text()
)
TOTAL = 20_000
SENDERS = 4
KILLS = 10
SUBJECTS = ("VmPoweredOffEvent", "VmPoweredOnEvent", "DrsVmPoweredOnEvent")
# Which subjects each function subscribes to (its `topic` annotation).
TOPICS = {"alpha": "VmPoweredOffEvent", "beta": "*"}


@dataclass
class Request:
    """One POST to the webhook: a single event (binary or structured mode) or a batch."""

    events: list[dict[str, Any]]
    mode: str  # binary | structured | batch

    def http(self, token: str) -> tuple[dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"}
        if self.mode == "batch":
            return {**headers, "Content-Type": BATCH_CONTENT_TYPE}, json.dumps(self.events).encode()
        (event,) = self.events
        if self.mode == "structured":
            return {**headers, "Content-Type": STRUCTURED_CONTENT_TYPE}, json.dumps(event).encode()
        for name, value in event.items():
            if name not in ("data", "datacontenttype"):
                headers[f"ce-{name}"] = value
        headers["Content-Type"] = event["datacontenttype"]
        return headers, json.dumps(event["data"]).encode()


def make_requests(rng: random.Random) -> list[Request]:
    events = []
    for key in range(TOTAL):
        data = dict(SAMPLE["data"], Key=key)
        subject = rng.choice(SUBJECTS)
        events.append(
            dict(SAMPLE, id=str(uuid.UUID(int=rng.getrandbits(128))), subject=subject, data=data)
        )
    requests, at = [], 0
    while at < TOTAL:
        if rng.random() < 0.3:
            requests.append(Request(events[at : at + 1], rng.choice(["binary", "structured"])))
            at += 1
        else:
            size = rng.randint(2, 100)
            requests.append(Request(events[at : at + size], "batch"))
            at += size
    return requests


@dataclass
class Ledger:
    """What the senders were told: acknowledged events, and requests that failed."""

    acked: dict[str, str] = field(default_factory=dict)  # id -> subject
    failed: list[Request] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # 4xx: would be a test bug
    sent: int = 0  # events in requests answered or failed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: Request, status: int | None, body: str = "") -> None:
        with self.lock:
            self.sent += len(request.events)
            if status is not None and 200 <= status < 300:
                self.acked.update((e["id"], e["subject"]) for e in request.events)
                return
            self.failed.append(request)
            if status is not None and 400 <= status < 500:
                self.refused.append((status, body[:300]))


class Received:
    """A function's recorder file, read as it grows: ids in order, and worker pids."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.ids: list[str] = []
        self.subjects: dict[str, str] = {}
        self.pids: list[int] = []

    def poll(self) -> Received:
        if not self.path.exists():
            return self
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            record = json.loads(line)
            self.ids.append(record["id"])
            self.subjects[record["id"]] = record["subject"]
            self.pids.append(record["pid"])
        return self


def children_of(parent: int, pids: list[int]) -> list[int]:
    """Those of `pids` that are live child processes of `parent` (not reused pids)."""
    out = []
    for pid in dict.fromkeys(reversed(pids)):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: the state, then the parent pid.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z" and int(ppid) == parent:
            out.append(pid)
    return out


def leased(db: Path) -> Counter[str]:
    """Deliveries the log holds as leased, per function: in flight at a kill."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT subscription, count(*) FROM deliveries WHERE status='leased' GROUP BY 1"
        ).fetchall()
    return Counter(dict(rows))


@pytest.mark.timeout(600)
def test_sigkills_lose_no_acknowledged_event(tmp_path: Path) -> None:
    seed = int(os.environ.get("VEBA_FAULT_SEED") or random.SystemRandom().getrandbits(32))
    rng = random.Random(seed)
    where = f"(VEBA_FAULT_SEED={seed})"
    data_dir = tmp_path / "data"
    app = ApplianceProcess(data_dir, "--no-simulator")
    try:
        run(app, tmp_path, rng, where)
    finally:
        app.stop()


def run(app: ApplianceProcess, tmp_path: Path, rng: random.Random, where: str) -> None:
    app.start()
    token = app.token
    # Kills fail attempts; retry soon and often enough never to dead-letter.
    retry = {"retry": 100, "backoffDelay": "PT0.05S", "backoffCap": "PT1S"}
    outs = deploy_recorders(app, tmp_path, TOPICS, topics=TOPICS, delivery=retry)
    received = {name: Received(path) for name, path in outs.items()}

    requests = make_requests(rng)
    ledger = Ledger()
    up = threading.Event()
    up.set()

    def send(mine: list[Request]) -> None:
        with httpx.Client(base_url=app.url, timeout=60) as http:
            for request in mine:
                headers, body = request.http(token)
                try:
                    r = http.post("/webhook", content=body, headers=headers)
                except httpx.HTTPError:
                    ledger.record(request, None)
                    # The appliance is down: wait until it is back, then go on.
                    assert up.wait(180), "the appliance did not come back"
                    continue
                ledger.record(request, r.status_code, r.text)

    senders = [
        threading.Thread(target=send, args=(requests[i::SENDERS],), daemon=True)
        for i in range(SENDERS)
    ]
    for t in senders:
        t.start()

    # Ten moments, spread at random over the run (by events sent so far).
    moments = sorted(rng.sample(range(1, TOTAL // 500), KILLS))
    in_flight: Counter[str] = Counter()  # leased at appliance kills, per function
    worker_kills: Counter[str] = Counter()
    run_started = {name: 0 for name in received}  # index of the first line of this run
    for moment in moments:
        # A worker first, once this run's workers are delivering.
        victim_fn = rng.choice(sorted(received))
        victim = received[victim_fn]
        assert app.proc is not None
        parent = app.proc.pid

        def live_worker(
            victim: Received = victim, fn: str = victim_fn, parent: int = parent
        ) -> list[int]:
            return children_of(parent, victim.poll().pids[run_started[fn] :])

        pids = wait_for(live_worker, 120, f"a worker of {victim_fn} delivering {where}")
        os.kill(rng.choice(pids), signal.SIGKILL)
        worker_kills[victim_fn] += 1

        wait_for(
            lambda m=moment: ledger.sent >= m * 500, 180, f"{moment * 500} events sent {where}"
        )
        up.clear()
        app.kill()
        in_flight += leased(app.data_dir / "events.db")
        for name, r in received.items():
            run_started[name] = len(r.poll().ids)
        app.start()
        up.set()

    for t in senders:
        t.join(timeout=300)
        assert not t.is_alive(), f"a sender is stuck {where}"
    assert not ledger.refused, f"valid requests refused: {ledger.refused[:3]} {where}"
    assert ledger.sent == TOTAL

    # Every acknowledged event reaches each function subscribed to its subject.
    expected = {
        name: {i for i, subject in ledger.acked.items() if topic in ("*", subject)}
        for name, topic in TOPICS.items()
    }
    for name, r in received.items():
        wait_for(
            lambda r=r, name=name: expected[name] <= set(r.poll().ids),
            300,
            f"{name} to receive its {len(expected[name])} acknowledged events {where}",
        )

    with sqlite3.connect(app.data_dir / "events.db") as db:
        logged = {row[0] for row in db.execute("SELECT id FROM events")}
        dead = db.execute("SELECT count(*) FROM deliveries WHERE status='dead'").fetchone()[0]
    assert dead == 0, f"{dead} deliveries dead-lettered {where}"

    # A request without a 2xx is in the log whole or not at all.
    whole = 0
    for request in ledger.failed:
        ids = {e["id"] for e in request.events}
        assert len(ids & logged) in (0, len(ids)), (
            request.mode,
            len(ids & logged),
            len(ids),
            where,
        )
        whole += ids <= logged

    for name, r in received.items():
        r.poll()
        # Only what it subscribed to, and only what the log holds.
        assert set(r.ids) <= logged, where
        assert all(TOPICS[name] in ("*", s) for s in r.subjects.values()), where
        duplicates = len(r.ids) - len(set(r.ids))
        bound = in_flight[name] + worker_kills[name]
        assert duplicates <= bound, (name, duplicates, dict(in_flight), dict(worker_kills), where)

    print(
        f"{where}: {len(ledger.acked)} acknowledged, {len(ledger.failed)} requests failed at kills"
        f" ({whole} of them logged whole, the rest not at all),"
        f" deliveries in flight at {KILLS} appliance kills {dict(in_flight)},"
        f" worker kills {dict(worker_kills)}, duplicates"
        f" { ({n: len(r.ids) - len(set(r.ids)) for n, r in received.items()}) }, 0 lost"
    )
