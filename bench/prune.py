"""The hook for the retention measurement: latency while the appliance prunes.

bench/retention.py (written separately) provides ``measure(events, rate) -> dict``;
``python -m bench --prune-events N`` calls it when it is there and reports that it
is missing otherwise.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from bench.report import PruneResult

RETENTION_MISSING = "bench/retention.py missing"


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def measure_prune(events: int, rate: float) -> PruneResult:
    """The retention measurement, if bench/retention.py is there (another helper's)."""
    result = PruneResult(events=events, rate=rate)
    try:
        retention = importlib.import_module("bench.retention")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.retention":
            raise
        result.error = RETENTION_MISSING
        _log(f"prune: not measured: {result.error}")
        return result
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
