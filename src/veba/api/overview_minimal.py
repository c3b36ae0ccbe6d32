"""A minimal `GET /api/v1/overview` for the dashboard, in the shape agreed with
the metrics work (which replaces it): rates are sampled when the overview is
asked for, durations are not measured (null), and a function's lag is the age
of the oldest of its last 1,000 pending deliveries."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from fastapi import APIRouter, Depends, Request

from veba import __version__
from veba.api.auth import require_token
from veba.appliance import Appliance

__all__ = ["overview_router"]

STEP = 10  # seconds a point of the series covers
POINTS = 360  # an hour

overview_router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)], tags=["veba"])


class _Sampler:
    """Totals seen at each request; their differences land in 10-second buckets."""

    def __init__(self) -> None:
        self.started = time.time()
        self.last: dict[str, int] | None = None
        self.buckets: dict[int, dict[str, int]] = {}
        self.recent: deque[tuple[float, dict[str, int]]] = deque(maxlen=32)

    def add(self, now: float, totals: dict[str, int]) -> None:
        if self.last is not None:
            bucket = self.buckets.setdefault(int(now // STEP), {})
            for key, value in totals.items():
                bucket[key] = bucket.get(key, 0) + max(0, value - self.last.get(key, 0))
        self.last = totals
        self.recent.append((now, totals))
        oldest = int(now // STEP) - POINTS
        for stale in [b for b in self.buckets if b <= oldest]:
            del self.buckets[stale]

    def rate(self, key: str) -> float:
        """Per second over the last ~30 s of samples."""
        if len(self.recent) < 2:
            return 0.0
        now, last = self.recent[-1]
        first = next(((t, v) for t, v in self.recent if now - t <= 30), self.recent[0])
        if first[0] >= now:
            first = self.recent[0]
        elapsed = now - first[0]
        return 0.0 if elapsed <= 0 else (last.get(key, 0) - first[1].get(key, 0)) / elapsed

    def series(self, now: float, key: str) -> list[int]:
        end = int(now // STEP)
        return [self.buckets.get(b, {}).get(key, 0) for b in range(end - POINTS + 1, end + 1)]


@overview_router.get("/overview")
async def overview(request: Request) -> dict[str, Any]:
    """Everything the dashboard shows at a glance."""
    appliance: Appliance = request.app.state.appliance
    sampler: _Sampler = getattr(request.app.state, "overview_sampler", None) or _Sampler()
    request.app.state.overview_sampler = sampler
    now = time.time()
    counts = await appliance.log.counts()
    newest = await appliance.log.events(limit=1, newest_first=True)
    totals = {"events": newest[0].seq if newest else 0}
    subscribers: list[tuple[str, str, Any, dict[str, Any]]] = []
    for each in appliance.functions.all():
        subscribers.append(
            (each.definition.name, "function", each.dispatcher, {"deployment": each})
        )
    for p in appliance.processors.status():
        subscribers.append((str(p["name"]), "processor", None, {"processor": p}))
    for outcome in ("delivered", "retried", "dead"):
        totals[outcome] = 0
    for name, _, dispatcher, extra in subscribers:
        c = dispatcher.counts if dispatcher is not None else None
        p = extra.get("processor") or {}
        for outcome in ("delivered", "retried", "dead"):
            n = getattr(c, outcome) if c is not None else int(p.get(outcome, 0))
            totals[outcome] += n
            totals[f"{name}:{outcome}"] = n
    sampler.add(now, totals)

    functions = []
    for name, kind, dispatcher, extra in subscribers:
        mine = counts.get(name, {})
        backlog = mine.get("pending", 0) + mine.get("leased", 0)
        lag = 0.0
        if backlog:
            pending = await appliance.log.deliveries(
                subscription=name, status="pending", limit=1000
            )
            if pending:
                lag = max(0.0, now - min(i.created for i in pending))
        d = extra.get("deployment")
        p = extra.get("processor") or {}
        error = dispatcher.last_error if dispatcher is not None else p.get("last_error")
        delivered = totals[f"{name}:delivered"]
        retried, dead = totals[f"{name}:retried"], totals[f"{name}:dead"]
        functions.append(
            {
                "name": name,
                "kind": kind,
                "version": d.definition.code_hash if d else None,
                "deployed": d.definition.deployed_at if d else None,
                "state": d.status if d else "ready",
                "workers": d.definition.workers if d else 0,
                "paused": d.paused if d else False,
                "rate": round(sampler.rate(f"{name}:delivered"), 2),
                "p50_ms": None,
                "p99_ms": None,
                "attempts": delivered + retried + dead,
                "errors": retried + dead,
                "in_flight": dispatcher.counts.in_flight if dispatcher is not None else 0,
                "backlog": backlog,
                "lag_seconds": round(lag, 2),
                "delivered": mine.get("delivered", 0),
                "dead": mine.get("dead", 0),
                "last_error": None
                if not error
                else {"at": now, "error": error, "event_id": None, "delivery_id": None},
            }
        )
    providers = []
    for provider in appliance.providers:
        s = provider.status()
        providers.append(
            {
                "name": s.get("name", provider.name),
                "type": s.get("type", ""),
                "state": s.get("state") or ("connected" if s.get("connected") else "not connected"),
                "connected": s.get("connected"),
                "source": s.get("source"),
                "last_key": s.get("last_key"),
                "lag": s.get("lag"),
                "lag_seconds": s.get("lag_seconds"),
                "last_error": s.get("last_error"),
                "events": s.get("events", 0),
                "rate": s.get("rate"),
            }
        )
    path = appliance.settings.log_path
    return {
        "now": now,
        "started": sampler.started,
        "version": __version__,
        "series": {
            "step": STEP,
            "end": float((int(now // STEP) + 1) * STEP),
            "events": sampler.series(now, "events"),
            "deliveries": {k: sampler.series(now, k) for k in ("delivered", "retried", "dead")},
        },
        "functions": functions,
        "providers": providers,
        "dlq": {"total": sum(c.get("dead", 0) for c in counts.values())},
        "log": {"size_bytes": _size(str(path)), "wal_bytes": _size(f"{path}-wal")},
    }


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
