"""The 3-node cluster fixture does what the multi-node tests rely on: a stream
with 3 replicas keeps every acknowledged message while a server is down and
after it comes back."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from tests.natscluster import NatsCluster, nats_cluster_fixture  # noqa: F401

STREAM = "fixture-proof"


async def _publish(js: JetStreamContext, number: int, deadline: float = 60.0) -> int:
    """Publish message `number` until it is acknowledged (the same Nats-Msg-Id
    each try, so a retry after a lost ack is not stored twice); its sequence."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            ack = await js.publish(
                f"{STREAM}.m",
                str(number).encode(),
                headers={"Nats-Msg-Id": f"m-{number}"},
                timeout=2.0,
            )
            return ack.seq
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error):
            # An election after the leader went away: no one answers for a moment.
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


async def test_a_replicated_stream_keeps_every_acked_message_across_a_server_restart(
    nats_cluster: NatsCluster,
) -> None:
    client = await nats.connect(
        nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"], num_replicas=3))
        acked: dict[int, int] = {}  # sequence → message number
        for number in range(50):
            acked[await _publish(js, number)] = number

        # Mid-stream, the server leading the stream dies without a word.
        info = await js.stream_info(STREAM)
        assert info.cluster is not None and info.cluster.leader
        down = nats_cluster.index_of(info.cluster.leader)
        nats_cluster.stop(down, kill=True)
        for number in range(50, 120):
            acked[await _publish(js, number)] = number
        info = await js.stream_info(STREAM)
        assert info.cluster is not None and info.cluster.leader != nats_cluster.nodes[down].name

        await asyncio.to_thread(nats_cluster.start, down)  # back, and caught up (healthz)
        for number in range(120, 150):
            acked[await _publish(js, number)] = number

        # Now another server goes: the quorum needs the one that came back, so
        # what is read below is also what it holds.
        other = next(i for i in range(3) if i != down and nats_cluster.nodes[i].running)
        nats_cluster.stop(other)
        assert len(acked) == 150 and sorted(acked.values()) == list(range(150))
        for seq, number in sorted(acked.items()):
            message = await _get(js, seq)
            assert message == str(number).encode(), f"sequence {seq}"
        assert (await js.stream_info(STREAM)).state.messages == 150
    finally:
        await client.close()


async def _get(js: JetStreamContext, seq: int, deadline: float = 60.0) -> bytes:
    give_up = time.monotonic() + deadline
    while True:
        try:
            return (await js.get_msg(STREAM, seq)).data or b""
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


def test_teardown_stops_every_server_and_removes_its_folders() -> None:
    cluster = NatsCluster()
    with cluster:
        processes = [node.process for node in cluster.nodes]
        assert all(p is not None and p.poll() is None for p in processes)
    assert all(p is not None and p.poll() is not None for p in processes)
    assert not cluster.root.exists()


def test_teardown_happens_when_the_test_body_fails() -> None:
    cluster = NatsCluster()
    with pytest.raises(ZeroDivisionError), cluster:
        _ = 1 / 0
    assert all(node.process is None for node in cluster.nodes)
    assert not cluster.root.exists()
