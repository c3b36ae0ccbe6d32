"""Drivers for the peers: workers as subprocesses, the bench process as the producer."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis

from bench.common import REPO_ROOT, Event, env_with
from bench.driver import PER_EVENT_THREADS, Driver, SendMode
from bench.procs import Managed

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class RedisPeer(Driver):
    """A peer whose broker is a Redis DB the bench owns: flushed before and after."""

    app_module = ""
    task_name = "noop"

    def __init__(self, redis_url: str) -> None:
        if urlsplit(redis_url).hostname not in LOOPBACK:
            raise ValueError(f"refusing a non-loopback Redis: {redis_url}")
        super().__init__()
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.worker: Managed | None = None

    def _worker_cmd(self) -> list[str]:
        raise NotImplementedError

    def _pending(self) -> int:
        """Messages the broker still holds: queued or delivered but not acknowledged."""
        raise NotImplementedError

    def _launch(self) -> None:
        self.redis.flushdb()
        # The app module reads the URL at import; the bench imports it to send.
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        module = importlib.import_module(self.app_module)
        self.task: Any = getattr(module, self.task_name)
        self.worker = Managed(
            self.name,
            self._worker_cmd(),
            env=env_with(BENCH_OUT=str(self.out_dir), BENCH_REDIS_URL=self.redis_url),
            log=self.work_dir / f"{self.name}.log",
            cwd=REPO_ROOT,
        )

    def _shutdown(self) -> None:
        try:
            if self.worker is not None:
                self.worker.stop()
        finally:
            self.redis.flushdb()
            self.redis.close()

    def _alive(self) -> None:
        assert self.worker is not None
        self.worker.check_alive()

    def _confirm_acked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (pending := self._pending()) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {pending} messages still unacknowledged")
            self._alive()
            time.sleep(0.02)
        assert self.worker is not None
        self.worker.note_descendants()

    def _sender(self, mode: SendMode) -> Callable[[Sequence[Event]], None]:
        def send(events: Sequence[Event]) -> None:
            for event in events:
                self._submit_one(event)

        return send


class DramatiqDriver(RedisPeer):
    name = "dramatiq"
    default_mode = SendMode(
        "send", "Dramatiq `actor.send()`", 1, PER_EVENT_THREADS,
        "`actor.send()` per event: the `RedisBroker`'s own client, a redis-py connection pool",
    )  # fmt: skip
    app_module = "bench.peers.dramatiq_app"
    processes = 2
    threads = 8

    def _worker_cmd(self) -> list[str]:
        return [
            sys.executable, "-m", "dramatiq", self.app_module,
            "-p", str(self.processes), "-t", str(self.threads),
        ]  # fmt: skip

    def _submit_one(self, event: Event) -> None:
        self.task.send(event.obj)

    def _pending(self) -> int:
        # The Redis broker keeps a message's body in <ns>:<queue>.msgs until it is acked.
        return int(self.redis.hlen("dramatiq:bench.msgs"))


class CeleryDriver(RedisPeer):
    name = "celery"
    default_mode = SendMode(
        "delay", "Celery `task.delay()`", 1, PER_EVENT_THREADS,
        "`task.delay()` per event: Celery's producer pool at its default size "
        "(`broker_pool_limit` 10: threads beyond it wait for a free connection)",
    )  # fmt: skip
    app_module = "bench.peers.celery_app"
    concurrency = 2

    def _worker_cmd(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "-P", "prefork", "-c", str(self.concurrency), "-Q", "bench",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "warning",
        ]  # fmt: skip

    def _submit_one(self, event: Event) -> None:
        self.task.delay(event.obj)

    def _pending(self) -> int:
        # kombu's Redis transport: the queue is a list; delivered-but-unacked
        # messages sit in the "unacked" hash until the (late) ack.
        pipe = self.redis.pipeline()
        pipe.llen("bench")
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return int(queued) + int(unacked)
