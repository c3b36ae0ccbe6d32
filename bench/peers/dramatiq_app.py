"""Dramatiq with its Redis broker and a no-op actor that records when it starts.

Run by the bench as ``dramatiq bench.peers.dramatiq_app -p 2 -t 8``; the bench
also imports it to send.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.recorder import StartRecorder

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
QUEUE = "bench"

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)
recorder = StartRecorder(os.environ.get("BENCH_OUT", "."), "dramatiq")


@dramatiq.actor(queue_name=QUEUE)
def noop(event: dict) -> None:
    recorder.record(event["id"])
