"""Provider leadership: at most one node reads a vCenter, by a lease in a
JetStream KV bucket (against the running server, and a 3-node cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client

from tests.natscluster import NatsCluster, nats_cluster_fixture  # noqa: F401
from veba.leadership import (
    DEFAULT_TTL,
    KVLeadership,
    SoleLeadership,
    lead,
    lease_key,
)

LOCAL = ["nats://127.0.0.1:4222"]
VC = "vcenter:vc1.lab:443"


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> float:
    """Poll `check` until true; the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Nodes:
    """Contenders, each with its own connection, as separate veba nodes would be."""

    bucket: str
    servers: list[str]
    replicas: int = 1
    clients: list[Client] = field(default_factory=list)
    contenders: list[Contender] = field(default_factory=list)

    async def node(self, ttl: float = DEFAULT_TTL, name: str = "") -> KVLeadership:
        client = await nats.connect(
            self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        self.clients.append(client)
        return await KVLeadership.open(
            client,
            client.jetstream(),
            self.bucket,
            ttl=ttl,
            replicas=self.replicas,
            holder=name or f"node{len(self.clients)}",
        )

    async def contender(self, who: str, ttl: float = DEFAULT_TTL) -> Contender:
        made = Contender(who, await self.node(ttl=ttl, name=who))
        self.contenders.append(made)
        return made

    async def revision(self) -> int:
        """The lease's revision; 0 if there is none, -1 if the cluster did not
        answer (a server just stopped)."""
        try:
            kv = await self.clients[0].jetstream().key_value(self.bucket)
            return (await kv.get(lease_key(VC))).revision or 0
        except nats.js.errors.KeyNotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError):
            return -1

    async def close(self) -> None:
        """Everything this test made goes, whatever state it is in: contenders
        stopped, the bucket deleted, every connection closed."""
        try:
            for contender in self.contenders:
                await contender.stop()
        finally:
            if self.clients:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self.clients[0].jetstream().delete_key_value(self.bucket)
            for client in self.clients:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await client.close()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    made = Nodes(f"t{uuid.uuid4().hex[:12]}_leases", LOCAL)
    try:
        yield made
    finally:
        await made.close()


@dataclass
class Contender:
    """A task that holds the lease of VC while it can and notes when it led."""

    who: str
    leadership: KVLeadership
    terms: list[list[float]] = field(default_factory=list)  # [start, end or inf]
    task: asyncio.Task[None] | None = None

    def start(self) -> Contender:
        self.task = asyncio.create_task(lead(self.leadership, VC, self._work))
        return self

    async def _work(self) -> None:
        self.terms.append([time.monotonic(), float("inf")])
        try:
            await asyncio.Event().wait()  # a provider's run() would be here
        finally:
            self.terms[-1][1] = time.monotonic()

    @property
    def leading(self) -> bool:
        return bool(self.terms) and self.terms[-1][1] == float("inf")

    async def stop(self) -> None:
        """Cancel its task; one that does not end within 30 s is a bug (a cancel
        lost in nats-py on 3.11 did that once)."""
        if self.task is not None:
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=30)
            assert done, f"{self.who} still runs 30 s after its cancel: {self.task.get_stack()}"


def assert_never_two_leaders(*contenders: Contender) -> None:
    terms = sorted((start, end, c.who) for c in contenders for start, end in c.terms)
    for (_, end, who), (start, _, other) in itertools.pairwise(terms):
        assert end <= start, f"{who} and {other} led at once"


async def test_of_two_contenders_exactly_one_leads(nodes: Nodes) -> None:
    a = (await nodes.contender("a", ttl=2.0)).start()
    b = (await nodes.contender("b", ttl=2.0)).start()
    await until(lambda: a.leading or b.leading, 30, "a leader")
    first = await _revision_when_readable(nodes)
    # Five renewals later the lease has outlived its TTL more than once over:
    # the other contender had every chance to find it expired.
    await until(lambda: _grew(nodes, first, 5), 30, "five renewals")
    assert [a.leading, b.leading].count(True) == 1
    assert len(a.terms) + len(b.terms) == 1  # and nobody lost it on the way


async def _grew(nodes: Nodes, first: int, by: int) -> bool:
    return await nodes.revision() >= first + by


LEADER_PROCESS = """
import asyncio, sys
import nats
from veba.leadership import KVLeadership

async def main() -> None:
    client = await nats.connect(sys.argv[1])
    leadership = await KVLeadership.open(client, client.jetstream(), sys.argv[2], holder="doomed")
    async with leadership.hold(sys.argv[3]):
        print("leading", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_leader_process_that_dies_without_releasing_is_replaced_within_9_s(
    nodes: Nodes,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LEADER_PROCESS, LOCAL[0], nodes.bucket, VC,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line == b"leading\n"
        b = (await nodes.contender("b")).start()  # the default TTL, 8 s
        first = await _revision_when_readable(nodes)
        await until(lambda: _grew(nodes, first, 5), 30, "the process to renew 5 times")
        assert not b.leading
        process.kill()  # no release: its lease must expire
        await process.wait()
        took = await until(lambda: b.leading, 10, "b to lead after the leader died")
        assert took < DEFAULT_TTL + 1  # expired within the TTL, noticed within a poll
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_clean_release_hands_over_at_once(nodes: Nodes) -> None:
    # A TTL of a minute: b polls every 15 s, so taking over within a second
    # can only be the release's delete marker waking it.
    a_leadership = await nodes.node(ttl=60.0)
    b = await nodes.contender("b", ttl=60.0)
    async with a_leadership.hold(VC) as lease:
        b.start()
        await until(lambda: _grew(nodes, 0, 1), 10, "a's lease in the bucket")
        assert not b.leading
        released = time.monotonic()
    assert not lease.held
    try:
        await until(lambda: b.leading, 5, "b to lead after a released")
        assert b.terms[0][0] - released < 1.0
    finally:
        await b.stop()


async def test_a_leader_whose_lease_was_taken_learns_it_at_its_next_renewal(
    nodes: Nodes,
) -> None:
    leadership = await nodes.node(ttl=2.0)
    async with leadership.hold(VC) as lease:
        kv = await nodes.clients[0].jetstream().key_value(nodes.bucket)
        await kv.put(lease_key(VC), b"someone else")  # as a node that saw it expire
        await until(lambda: not lease.held, 5, "the leader to notice")
    assert (await kv.get(lease_key(VC))).value == b"someone else"  # not deleted: not ours


async def test_lead_runs_the_work_while_leading_and_again_after_a_loss(nodes: Nodes) -> None:
    leadership = await nodes.node(ttl=2.0)
    runs: list[int] = []
    again = asyncio.Event()

    async def work() -> str:
        runs.append(1)
        if len(runs) == 2:
            again.set()
            return "done"
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    task = asyncio.create_task(lead(leadership, VC, work))
    await until(lambda: len(runs) == 1, 10, "the first run")
    kv = await nodes.clients[0].jetstream().key_value(nodes.bucket)
    await kv.delete(lease_key(VC))  # taken away: the first run is cancelled
    assert await asyncio.wait_for(task, 20) == "done"
    assert len(runs) == 2


async def test_an_existing_bucket_s_ttl_wins(nodes: Nodes) -> None:
    first = await nodes.node(ttl=3.0)
    second = await nodes.node(ttl=30.0)
    assert first.ttl == second.ttl == 3.0


async def test_sole_leadership_leads_everything_at_once() -> None:
    sole = SoleLeadership()
    async with sole.hold("a") as a, sole.hold("b") as b:
        assert a.held and b.held

    async def work() -> int:
        return 7

    assert await lead(sole, "a", work) == 7


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("vc1", "vc1"),
        ("vcenter:vc1.lab:443", "vcenter=3Avc1.lab=3A443"),
        ("a=b", "a=3Db"),
        (".a..b.", "=2Ea=2E.b=2E"),
        ("vcenter:[::1]:443", "vcenter=3A=5B=3A=3A1=5D=3A443"),
        ("é", "=C3=A9"),
        ("a b/c", "a=20b/c"),
    ],
)
def test_lease_keys_are_valid_and_readable(name: str, key: str) -> None:
    from nats.js.kv import _is_key_valid

    assert lease_key(name) == key
    assert _is_key_valid(key)


def test_a_lease_needs_a_name() -> None:
    with pytest.raises(ValueError):
        lease_key("")


async def test_on_a_3_node_cluster_one_leads_through_a_server_stop(
    nats_cluster: NatsCluster,
) -> None:
    nodes = Nodes(f"t{uuid.uuid4().hex[:12]}_leases", nats_cluster.urls, replicas=3)
    try:
        a = (await nodes.contender("a")).start()
        await until(lambda: a.leading, 30, "a to lead")
        b = (await nodes.contender("b")).start()
        c = (await nodes.contender("c")).start()
        js = nodes.clients[0].jetstream()
        info = await js.stream_info(f"KV_{nodes.bucket}")
        assert info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2  # three copies of the lease

        # The server leading the lease's stream dies: writes stall until the
        # others elect a new leader; the lease may or may not survive that.
        nats_cluster.stop(nats_cluster.index_of(info.cluster.leader), kill=True)
        before = await _revision_when_readable(nodes)
        await until(lambda: _grew(nodes, before, 5), 60, "a leader renewing after the stop")
        contenders = (a, b, c)
        assert [x.leading for x in contenders].count(True) == 1
        assert_never_two_leaders(*contenders)

        # With a server still down, clean releases hand over at once, each to
        # exactly one of the two left contending (the one released comes back).
        for _ in range(4):
            leader = next(x for x in contenders if x.leading)
            await leader.stop()
            stopped = time.monotonic()
            rest = [x for x in contenders if x is not leader]
            await until(lambda rest=rest: any(x.leading for x in rest), 10, "another to lead")
            assert min(x.terms[-1][0] for x in rest if x.leading) - stopped < 2.0
            leader.start()
            assert [x.leading for x in contenders].count(True) == 1
        for x in contenders:
            await x.stop()
        assert_never_two_leaders(*contenders)
    finally:
        await nodes.close()


async def _revision_when_readable(nodes: Nodes) -> int:
    """The lease's revision once the cluster answers reads again."""
    while True:
        try:
            return await asyncio.wait_for(nodes.revision(), 2)
        except (TimeoutError, nats.errors.Error):
            await asyncio.sleep(0.1)


async def test_on_a_3_node_cluster_racing_contenders_never_lead_two_at_once(
    nats_cluster: NatsCluster,
) -> None:
    # 2.9 clusters let two writes expecting the same revision both win; after a
    # release or a delete, four contenders race for the lease again and again.
    nodes = Nodes(f"t{uuid.uuid4().hex[:12]}_leases", nats_cluster.urls, replicas=3)
    try:
        contenders = [await nodes.contender(who, ttl=2.0) for who in "abcd"]
        for contender in contenders:
            contender.start()
        kv = await nodes.clients[0].jetstream().key_value(nodes.bucket)
        for round_ in range(8):
            await until(lambda: any(x.leading for x in contenders), 10, "a leader")
            leader = next(x for x in contenders if x.leading)
            term, since = leader.terms[-1], time.monotonic()
            if round_ % 2:  # an operator's `nats kv del`: a delete marker
                await kv.delete(lease_key(VC))
            else:  # a clean stop, and the node back in the race
                await leader.stop()
                leader.start()
            await until(
                lambda term=term, since=since: (
                    term[1] < float("inf")
                    and any(x.leading and x.terms[-1][0] > since for x in contenders)
                ),
                10,
                "the next leader",
            )
            assert_never_two_leaders(*contenders)
        for contender in contenders:
            await contender.stop()
        assert_never_two_leaders(*contenders)
        assert sum(len(x.terms) for x in contenders) >= 9
    finally:
        await nodes.close()


async def test_a_lease_outlives_a_restart_of_the_whole_cluster(nats_cluster: NatsCluster) -> None:
    # On file, the lease is still there when the servers come back within its
    # TTL: the holder renews it again, and no contender slipped in meanwhile.
    # The TTL leaves room for a slow restart: stopping and starting three servers
    # took over 16 s once on a loaded CI machine (20 s TTL: its holder gave up).
    nodes = Nodes(f"t{uuid.uuid4().hex[:12]}_leases", nats_cluster.urls, replicas=3)
    try:
        a = (await nodes.contender("a", ttl=45.0)).start()
        await until(lambda: a.leading, 30, "a to lead")
        b = (await nodes.contender("b", ttl=45.0)).start()
        before = await _revision_when_readable(nodes)
        for index in range(3):
            nats_cluster.stop(index)
        await asyncio.to_thread(nats_cluster.start)
        await until(lambda: _grew(nodes, before, 2), 60, "a's renewals after the restart")
        assert a.leading and len(a.terms) == 1
        assert not b.terms
    finally:
        await nodes.close()
