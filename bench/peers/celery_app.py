"""Celery with a Redis broker, late acks, and a no-op task that records when it starts.

Run by the bench as ``celery -A bench.peers.celery_app worker -P prefork -c 2``;
the bench also imports it to send.
"""

import os

from celery import Celery

from bench.recorder import StartRecorder

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
QUEUE = "bench"

app = Celery("bench", broker=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    # worker_prefetch_multiplier stays at its default (4).
)
recorder = StartRecorder(os.environ.get("BENCH_OUT", "."), "celery")


@app.task(name="bench.noop", acks_late=True)
def noop(event: dict) -> None:
    recorder.record(event["id"])
