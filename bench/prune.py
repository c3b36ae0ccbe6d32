"""The retention measurement in the main bench: latency while the appliance
prunes (`bench.retention.measure`), run by ``python -m bench --prune-events N``;
a failure is recorded in the report, not raised."""

from __future__ import annotations

import sys
import time
import traceback

from bench.report import PruneResult


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def measure_prune(events: int, rate: float) -> PruneResult:
    """Latency before and during the prune of `events` old events, at `rate`."""
    from bench import retention

    result = PruneResult(events=events, rate=rate)
    _log(f"prune: bench.retention.measure(events={events:,}, rate={rate:g})")
    began = time.monotonic()
    try:
        figures = retention.measure(events=events, rate=rate)
        result.figures = dict(figures)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        _log(f"prune FAILED:\n{traceback.format_exc()}")
    result.seconds = time.monotonic() - began
    return result
