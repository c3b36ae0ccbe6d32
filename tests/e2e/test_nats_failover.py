"""Two `veba serve` nodes on NATS JetStream, and one part of the cluster failing.

Everything is real: nats-server processes (a 3-server cluster of our own, or
the machine's server on 4222), `veba serve` processes, function workers and
govmomi's vCenter simulator. Each test keeps its streams and buckets under a
NAME of its own and deletes them at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from tests.e2e.harness import (
    RECORDER,
    ApplianceProcess,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.natscluster import NatsCluster, nats_cluster_fixture  # noqa: F401
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401

SAMPLE = json.loads(
    (Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json").read_text()
)
SHARED_NATS = "127.0.0.1:4222"
POWER = ("VmPoweredOnEvent", "VmPoweredOffEvent")


# -- helpers ----------------------------------------------------------------------


def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def _delete_everything_named(servers: list[str], prefix: str) -> None:
    nc = await nats.connect(servers=servers, connect_timeout=10)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"{prefix}_", f"KV_{prefix}-", f"KV_{prefix}_", f"OBJ_{prefix}_")):
                await js.delete_stream(name)  # its consumers go with it
    finally:
        await nc.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ApplianceProcess]]:
    """The `veba serve` nodes a test starts; every one stopped when it ends."""
    started: list[ApplianceProcess] = []
    yield started
    for node in started:
        node.stop()


def start_node(
    nodes: list[ApplianceProcess],
    folder: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> ApplianceProcess:
    node = ApplianceProcess(folder / "data", *args, env=env)
    nodes.append(node)
    return node.start()


def deploy_recorder(node: ApplianceProcess, folder: Path, topic: str, out: Path) -> None:
    write_function(folder / "fn" / "rec", RECORDER)
    stack = write_stack(
        folder / "fn" / "stack.yml",
        {
            "rec": {
                "lang": "python3-http",
                "handler": "./rec",
                "annotations": {"topic": topic},
                "environment": {"OUT": str(out)},
            }
        },
    )
    node.cli("up", "-f", str(stack))


def wait_until_it_runs(node: ApplianceProcess, name: str = "rec", timeout: float = 60) -> None:
    """Until `node` runs the function (deployed through another node, it is
    installed at the node's start); its log said if it does not."""

    def runs() -> bool:
        with node.client() as http:
            return http.get(f"/api/v1/functions/{name}").json().get("status") == "ready"

    try:
        wait_for(runs, timeout, f"{node.url} to run {name}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log:\n{node.log_path.read_text()[-3000:]}") from None


def settled(node: ApplianceProcess, name: str = "rec") -> Callable[[], bool]:
    """Nothing left to deliver (so a duplicate would have arrived by now)."""

    def check() -> bool:
        with node.client() as http:
            return http.get(f"/api/v1/functions/{name}").json()["pending"] == 0

    return check


def received_ids(out: Path) -> list[str]:
    return [record["id"] for record in read_jsonl(out)]


# -- 1. a NATS server stopped and started mid-stream -------------------------------

TOTAL = 2000
BATCH = 50


class Senders:
    """Threads posting batches of events to the nodes' webhooks, as a sender
    that honours a 503 would: a batch not answered 200 is sent again (the same
    ids: the log drops what it already has) until it is, for up to a minute.
    Only a batch answered 200 is acknowledged."""

    def __init__(self, targets: list[ApplianceProcess], batches: list[list[dict[str, Any]]]):
        self.acked: list[str] = []
        self.failed = Counter[str]()  # answers other than 200, by status
        self.first_failure: float | None = None
        self.last_failure: float | None = None
        self._lock = threading.Lock()
        # Two senders per node, each taking every fourth batch.
        plan = list(itertools.islice(itertools.cycle(targets), 2 * len(targets)))
        self._threads = [
            threading.Thread(target=self._send, args=(node, batches[i :: len(plan)]), daemon=True)
            for i, node in enumerate(plan)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        assert not any(t.is_alive() for t in self._threads), "senders still posting"

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _send(self, node: ApplianceProcess, batches: list[list[dict[str, Any]]]) -> None:
        headers = {
            "Authorization": f"Bearer {node.token}",
            "Content-Type": "application/cloudevents-batch+json",
        }
        with httpx.Client(base_url=node.url, timeout=30, headers=headers) as http:
            for batch in batches:
                give_up = time.monotonic() + 60
                while time.monotonic() < give_up:
                    try:
                        status = str(http.post("/webhook", content=json.dumps(batch)).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with self._lock:
                        if status == "200":
                            self.acked.extend(event["id"] for event in batch)
                            break
                        self.failed[status] += 1
                        self.last_failure = time.monotonic()
                        self.first_failure = self.first_failure or self.last_failure
                    time.sleep(0.25)  # the cluster is electing: give it a moment


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_a_nats_server_stopped_mid_stream_loses_no_acknowledged_event(
    kill: bool, nats_cluster: NatsCluster, nodes: list[ApplianceProcess], tmp_path: Path
) -> None:
    name = unique_name()
    servers = ",".join(node.url.removeprefix("nats://") for node in nats_cluster.nodes)
    args = ("--no-simulator", "--event-log", f"nats://{servers}/{name}", "--replicas", "3")
    out = tmp_path / "received.jsonl"

    a = start_node(nodes, tmp_path / "a", *args)
    deploy_recorder(a, tmp_path, "VmPoweredOffEvent", out)
    b = start_node(nodes, tmp_path / "b", *args)
    wait_until_it_runs(b)

    batches = [
        [dict(SAMPLE, id=str(uuid.uuid4())) for _ in range(BATCH)] for _ in range(TOTAL // BATCH)
    ]
    # Three quarters posted before and while the server is down, the rest
    # across its restart (while it catches up).
    split = len(batches) * 3 // 4
    before, across = Senders([a, b], batches[:split]), Senders([a, b], batches[split:])
    before.start()
    wait_for(lambda: before.count() >= TOTAL // 4, 60, "a quarter of the events acknowledged")
    wait_for(lambda: len(read_jsonl(out)) >= 50, 60, "deliveries under way")

    # Stop the server that leads JetStream's meta group: the hardest one to lose.
    victim = nats_cluster.index_of(nats_cluster.meta_leader())
    acked_at_stop = before.count()
    stopped_at, stopped_wall = time.monotonic(), time.time()
    nats_cluster.stop(victim, kill=kill)  # SIGTERM, or SIGKILL
    wait_for(
        lambda: before.count() >= acked_at_stop + 4 * BATCH,
        45,
        "events acknowledged with a server down",
    )
    more_acked_after = time.monotonic() - stopped_at
    across.start()
    nats_cluster.start(victim)  # returns once it has caught up
    down_for = time.monotonic() - stopped_at
    acked_at_start = before.count() + across.count()
    before.join(90)
    across.join(90)
    acked = set(before.acked) | set(across.acked)
    failed = before.failed + across.failed
    assert len(acked) == TOTAL, (len(acked), failed)  # each, sent again if need be

    wait_for(lambda: acked <= set(received_ids(out)), 60, "every acknowledged event delivered")
    delivered_after = time.monotonic() - stopped_at
    wait_for(settled(a), 30, "every delivery recorded (none left leased)")
    # Each event's copies: which attempt, by which worker, when (s after the
    # stop). Attempt 1 twice: the consumer's new leader had lost the record of
    # having delivered it; attempt 2: a lease lapsed.
    copies: dict[str, list[tuple[int, int, float]]] = {}
    for r in read_jsonl(out):
        copies.setdefault(r["id"], []).append(
            (r["attempt"], r["pid"], round(r["at"] - stopped_wall, 2))
        )
    duplicates = sum(len(c) - 1 for c in copies.values())
    twice = [(i[:8], c) for i, c in copies.items() if len(c) > 1]
    assert duplicates <= len(acked) // 1000, (duplicates, len(acked), twice[:5])

    # Delivery goes on, through either node, with the server back.
    after = {node.url: [dict(SAMPLE, id=str(uuid.uuid4())) for _ in range(5)] for node in (a, b)}
    for node in (a, b):
        with node.client() as http:
            r = http.post(
                "/webhook",
                content=json.dumps(after[node.url]),
                headers={"Content-Type": "application/cloudevents-batch+json"},
            )
            assert r.status_code == 200, r.text
    fresh = {event["id"] for batch in after.values() for event in batch}
    wait_for(lambda: fresh <= set(received_ids(out)), 30, "events posted after the restart")

    failures = [t for t in (before.first_failure, across.first_failure) if t is not None]
    refused = (
        f"refused from {min(failures) - stopped_at:.1f} s to"
        f" {max(t for t in (before.last_failure, across.last_failure) if t) - stopped_at:.1f} s"
        if failures
        else "none refused"
    )
    print(
        f"\n{nats_cluster.nodes[victim].name} {'killed' if kill else 'stopped'} at {acked_at_stop}"
        f" acked; {4 * BATCH} more acked {more_acked_after:.1f} s after; restarted after"
        f" {down_for:.1f} s with {acked_at_start} acked; answers not 200: {dict(failed)}"
        f" ({refused}); all {TOTAL} delivered {delivered_after:.1f} s after the stop;"
        f" duplicates {duplicates}"
    )
    for node in (a, b):
        node.stop()
    # (The cluster goes with the test; its streams are deleted all the same.)
    asyncio.run(_delete_everything_named(nats_cluster.urls, name))


# -- 2. the node that leads a vCenter killed --------------------------------------

TAKEOVER_LIMIT = 10.0  # the lease's TTL (8 s) and a login


@pytest.fixture
def name() -> Iterator[str]:
    """A NAME on the machine's NATS server; its streams and buckets deleted after
    (requested before `nodes`, so the nodes are stopped first)."""
    name = unique_name()
    yield name
    asyncio.run(_delete_everything_named([f"nats://{SHARED_NATS}"], name))


def vcenter_state(node: ApplianceProcess) -> dict[str, Any]:
    with node.client() as http:
        providers = http.get("/api/v1/status").json()["providers"]
    (vcenter,) = [p for p in providers if p["type"] == "vcenter"]
    return dict(vcenter)


def reading(node: ApplianceProcess) -> bool:
    """Whether this node reads the vCenter (it holds the provider's lease)."""
    state = vcenter_state(node)
    return bool(state["connected"]) and state["state"] in ("catching-up", "following")


class PowerOps:
    """Power operations on the simulator, one after another, in a thread of
    their own until stopped; `done` is (event class expected, VM) per operation."""

    def __init__(self, sim: VCSim) -> None:
        self.sim = sim
        self.done: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "power operations still under way"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            si = self.sim.connect()
            while not self._stop.is_set():
                self.done.extend(self.sim.power_ops(1, si))
                self._stop.wait(0.1)
        except BaseException as exc:
            self.error = exc


def logged_power_events(node: ApplianceProcess, source: str) -> list[dict[str, Any]]:
    """Every power event of `source` in the shared log, as the API lists it."""
    found: list[dict[str, Any]] = []
    after = 0
    with node.client() as http:
        while True:
            page = http.get("/api/v1/events", params={"after": after, "limit": 500}).json()
            if not page:
                return found
            after = page[-1]["seq"]
            found += [
                r["event"]
                for r in page
                if r["event"]["subject"] in POWER and r["event"]["source"] == source
            ]


def test_the_node_reading_a_vcenter_killed_another_takes_over_losing_nothing(
    name: str,
    vcsim: Callable[..., VCSim],
    nodes: list[ApplianceProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VC_PASSWORD", PASSWORD)
    sim = vcsim()
    args = (
        "--event-log", f"nats://{SHARED_NATS}/{name}",
        "--vcenter-password-env", "VC_PASSWORD",
        "--vcenter", f"http://{USER}@127.0.0.1:{sim.port}/sdk",
    )  # fmt: skip
    out = tmp_path / "received.jsonl"
    a = start_node(nodes, tmp_path / "a", *args)
    deploy_recorder(a, tmp_path, ",".join(POWER), out)
    b = start_node(nodes, tmp_path / "b", *args)
    wait_until_it_runs(b)

    def one_reads() -> list[ApplianceProcess]:
        readers = [node for node in (a, b) if reading(node)]
        return readers if len(readers) == 1 else []

    (leader,) = wait_for(one_reads, 30, "one node, and only one, to read the vCenter")
    (other,) = [node for node in (a, b) if node is not leader]
    assert vcenter_state(other)["state"] == "stopped"  # waiting for the lease

    def power_received() -> list[dict[str, Any]]:
        return [r for r in read_jsonl(out) if r["subject"] in POWER]

    ops = PowerOps(sim)
    ops.start()
    wait_for(lambda: len(power_received()) >= 5, 30, "the leader's events to arrive")
    killed_at = time.monotonic()
    leader.kill()
    wait_for(lambda: reading(other), 2 * TAKEOVER_LIMIT, "the other node to read the vCenter")
    takeover = time.monotonic() - killed_at
    done_at_takeover = len(ops.done)
    wait_for(lambda: len(ops.done) >= done_at_takeover + 5, 30, "operations after the takeover")
    ops.stop()
    done = ops.done

    wait_for(lambda: len(power_received()) >= len(done), 60, f"all {len(done)} power events")
    wait_for(settled(other), 60, "every delivery recorded")
    got = power_received()
    keys = [r["data"]["Key"] for r in got]
    assert sorted((r["subject"], r["data"]["Vm"]["Vm"]["Value"]) for r in got) == sorted(done)
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)

    # The log holds each vCenter event once: the new leader went on from the
    # checkpoint, not from before it.
    logged = logged_power_events(other, sim.url)
    logged_keys = [event["data"]["Key"] for event in logged]
    assert len(logged_keys) == len(set(logged_keys)), Counter(logged_keys).most_common(3)
    assert sorted(logged_keys) == sorted(keys)
    print(
        f"\ntakeover {takeover:.1f} s after the kill; {len(done)} power operations"
        f" ({done_at_takeover} by the takeover), each logged and delivered once"
    )
    assert takeover <= TAKEOVER_LIMIT, takeover
