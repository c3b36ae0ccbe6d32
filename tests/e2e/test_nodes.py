"""Three veba nodes sharing one appliance on NATS JetStream (issue 12).

Each node is a real `veba serve --event-log nats://127.0.0.1:4222/NAME` with
its own data directory and port; NAME is the test's own, and its streams and
buckets are deleted afterwards. Events go to the nodes' webhooks round-robin.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    ApplianceProcess,
    deploy_recorders,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.jetstream_buckets import delete_everything_named

SAMPLE = Path(__file__).parent.parent / "data" / "cloudevent-vm-powered-off.json"
BATCH = 100
FUNCTIONS = ("alpha", "beta")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[int], list[ApplianceProcess]]]:
    """Starts NODES nodes of one appliance (a NAME of the test's own). Every
    node after the first gets the first's `secret.key`, as an operator copies it."""
    name = f"t{uuid.uuid4().hex[:12]}"
    started: list[ApplianceProcess] = []

    def start(count: int) -> list[ApplianceProcess]:
        for _ in range(count):
            data_dir = tmp_path / f"node{len(started)}"
            if started:
                data_dir.mkdir(mode=0o700)
                shutil.copy2(started[0].data_dir / "secret.key", data_dir / "secret.key")
            node = ApplianceProcess(
                data_dir, "--no-simulator", "--event-log", f"nats://127.0.0.1:4222/{name}"
            )
            started.append(node)
            node.start()
        return started[-count:]

    yield start
    for node in started:
        node.stop()
    asyncio.run(delete_everything_named(name))


def batches_of(total: int) -> list[list[dict]]:
    sample = json.loads(SAMPLE.read_text())
    return [
        [dict(sample, id=str(uuid.uuid4())) for _ in range(BATCH)] for _ in range(total // BATCH)
    ]


class Senders:
    """Threads posting batches to the nodes round-robin; `acked` holds the ids
    of every batch a node answered 200 (a node gone loses only its own)."""

    def __init__(self, nodes: list[ApplianceProcess], batches: list[list[dict]]) -> None:
        self.acked: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        targets = itertools.cycle(nodes)
        work = [(next(targets), batch) for batch in batches]
        self._threads = [threading.Thread(target=self._send, args=(work[i::4],)) for i in range(4)]
        for thread in self._threads:
            thread.start()

    def _send(self, work: list[tuple[ApplianceProcess, list[dict]]]) -> None:
        with httpx.Client(timeout=60) as http:
            for node, batch in work:
                try:
                    response = http.post(
                        f"{node.url}/webhook",
                        content=json.dumps(batch),
                        headers={
                            "Content-Type": "application/cloudevents-batch+json",
                            "Authorization": f"Bearer {node.token}",
                        },
                    )
                except httpx.HTTPError:
                    response = None  # that node is gone: the batch was never acknowledged
                with self._lock:
                    if response is not None and response.status_code == 200:
                        self.acked.extend(e["id"] for e in batch)
                    else:
                        self.refused += 1

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=300)


def received(out: Path) -> Counter[str]:
    return Counter(e["id"] for e in read_jsonl(out))


def test_three_nodes_deliver_every_event_to_every_function(
    nodes: Callable[[int], list[ApplianceProcess]], tmp_path: Path
) -> None:
    (first,) = nodes(1)
    outs = deploy_recorders(first, tmp_path, FUNCTIONS)
    everyone = [first, *nodes(2)]  # they find the functions in NATS at start
    for node in everyone:
        with node.client() as api:
            assert {f["name"] for f in api.get("/system/functions").json()} >= set(FUNCTIONS)

    senders = Senders(everyone, batches_of(20_000))
    senders.join()
    assert senders.refused == 0 and len(senders.acked) == 20_000
    acked = set(senders.acked)
    for name, out in outs.items():
        wait_for(lambda out=out: acked <= set(received(out)), 300, f"{name}: every event")
        counts = received(out)
        duplicates = sum(counts.values()) - len(counts)
        assert duplicates <= len(acked) // 1000, (name, duplicates)  # at most 0.1 %
    # The work was shared: every node's workers handled some of it.
    pids = Counter(e["pid"] for e in read_jsonl(outs["alpha"]))
    assert len(pids) >= 3, pids


def test_a_node_killed_mid_stream_loses_nothing_acknowledged(
    nodes: Callable[[int], list[ApplianceProcess]], tmp_path: Path
) -> None:
    (first,) = nodes(1)
    outs = deploy_recorders(first, tmp_path, FUNCTIONS)
    everyone = [first, *nodes(2)]
    senders = Senders(everyone, batches_of(6_000))
    wait_for(lambda: len(senders.acked) >= 2_000, 120, "a third of the events acknowledged")
    wait_for(lambda: len(read_jsonl(outs["alpha"])) >= 200, 120, "deliveries under way")
    everyone[1].kill()  # with leases held and appends under way
    senders.join()
    acked = set(senders.acked)
    assert senders.refused > 0  # the dead node's batches: killed mid-stream indeed
    for name, out in outs.items():
        # The leases the dead node held lapse after the ack wait; the others redo them.
        wait_for(lambda out=out: acked <= set(received(out)), 300, f"{name}: every acked event")


# Records each event with the pid of the worker that got it and a digest of the
# secret it was given (the value itself would be scrubbed from its output).
SECRET_RECORDER = """
import hashlib, json, os

def handle(event, context):
    ce = json.loads(event.body)
    folder = os.environ["VEBA_SECRETS_DIR"]
    token = open(os.path.join(folder, "api-token"), "rb").read()
    line = json.dumps({"id": ce["id"], "pid": os.getpid(),
                       "secret": hashlib.sha256(token).hexdigest()}) + "\\n"
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"statusCode": 200, "body": ce["id"]}
"""


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (a node's workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent]
        found.update(children)
        frontier.extend(children)
    return found


def test_a_function_and_a_secret_made_or_rotated_through_one_node_serve_deliveries_on_another(
    nodes: Callable[[int], list[ApplianceProcess]], tmp_path: Path
) -> None:
    a, _, c = nodes(3)  # all running before anything is made
    a.cli("secret", "create", "api-token", input="t0p-s3cret\n")
    out = tmp_path / "secret.jsonl"
    write_function(tmp_path / "fn" / "keeper", SECRET_RECORDER)
    stack = {
        "keeper": {
            "lang": "python3-http",
            "handler": "./keeper",
            "annotations": {"topic": "VmPoweredOffEvent"},
            "secrets": ["api-token"],
            "environment": {"OUT": str(out)},
        }
    }
    a.cli("up", "-f", str(write_stack(tmp_path / "fn" / "stack.yml", stack)))

    def running_on_c() -> bool:
        with c.client() as api:
            listed = {f["name"]: f for f in api.get("/system/functions").json()}
        return listed.get("keeper", {}).get("availableReplicas", 0) >= 1

    wait_for(running_on_c, 120, "node C to start the function deployed through A")
    senders = Senders([c], batches_of(200))  # only C takes these events
    senders.join()
    assert len(senders.acked) == 200
    wait_for(lambda: set(senders.acked) <= set(received(out)), 120, "every event delivered")
    assert c.proc is not None
    on_c = descendants(c.proc.pid)
    records = read_jsonl(out)
    assert any(r["pid"] in on_c for r in records), "no delivery ran on node C"
    expected = hashlib.sha256(b"t0p-s3cret").hexdigest()
    assert {r["secret"] for r in records} == {expected}

    # Rotated through A: C's workers restart with the new value (C follows the
    # secrets its functions read), and no event is lost across the restart.
    a.cli("secret", "create", "api-token", "--replace", input="r0tated-s3cret\n")
    rotated = hashlib.sha256(b"r0tated-s3cret").hexdigest()

    def rotated_on_c() -> bool:
        probe = Senders([c], batches_of(BATCH))
        probe.join()
        wait_for(lambda: set(probe.acked) <= set(received(out)), 60, "the probe delivered")
        got = {r["secret"] for r in read_jsonl(out) if r["id"] in set(probe.acked)}
        return got == {rotated}

    wait_for(rotated_on_c, 60, "node C's function to read the secret rotated through A")
    records = read_jsonl(out)
    assert any(r["pid"] in descendants(c.proc.pid) and r["secret"] == rotated for r in records)
