"""Scaling: how fast one function drains a backlog of I/O-bound calls, by setting.

    .venv/bin/python -m bench.scaling --calls 400 --sleep 0.2

Starts a `FunctionPool` (the warm workers a deployed function runs) with a
handler that waits --sleep seconds, gives it --calls calls at once (a backlog:
the dispatcher hands a pool at most maxInflight, but the pool sees the same
demand) and times the drain for: one worker (`scale.max: 1`, veba's default),
eight workers (`scale.min: 1`, `scale.max: 8`), and one worker overlapping
eight calls (`veba.overlap: 8`, threads and `async def handle`). Then reports
each worker's RSS after a call (`VmRSS`), which scaling multiplies. Not run in
CI; prints a table to paste into docs/design.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from veba.functions import FunctionPool, Invocation, ensure_venv

BLOCKING = """
import os, time

def handle(event, context):
    time.sleep(float(event.body))
    return {"statusCode": 200, "body": str(os.getpid())}
"""

ASYNC = """
import asyncio, os

async def handle(event, context):
    await asyncio.sleep(float(event.body))
    return {"statusCode": 200, "body": str(os.getpid())}
"""

SETUPS: list[tuple[str, str, dict[str, Any]]] = [
    ("scale.max 1 (default)", BLOCKING, {"workers": 1}),
    ("scale.min 1, scale.max 8", BLOCKING, {"workers": 1, "max_workers": 8}),
    ("veba.overlap 8, threads", BLOCKING, {"workers": 1, "overlap": 8}),
    ("veba.overlap 8, async def", ASYNC, {"workers": 1, "overlap": 8}),
]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def drain(source: str, options: dict[str, Any], calls: int, sleep: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="veba-bench-scaling-"))
    (folder / "handler.py").write_text(source)
    python = ensure_venv(folder, folder / "venvs", lambda _: None)
    pool = FunctionPool(
        "bench", python=python, handler_dir=folder, lang="python3-http", **options,
        log_sink=lambda *_: None,
    )  # fmt: skip
    await pool.start()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(pool.invoke(Invocation(str(sleep).encode()), timeout=60) for _ in range(calls))
        )
        seconds = time.monotonic() - started
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
        pids = {int(o.body) for o in outcomes}
        rss = [rss_kb(pid) for pid in pool.stats["pids"]]
        return {"seconds": seconds, "workers": len(pids), "rss_kb": max(rss, default=0)}
    finally:
        await pool.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--sleep", type=float, default=0.2)
    args = parser.parse_args()
    print(f"{args.calls} calls of a {args.sleep:g} s handler")
    print("| setup | drain (s) | calls/s | workers used | RSS per worker (MB) |")
    print("|---|---|---|---|---|")
    for name, source, options in SETUPS:
        got = await drain(source, options, args.calls, args.sleep)
        print(
            f"| {name} | {got['seconds']:.2f} | {args.calls / got['seconds']:.1f}"
            f" | {got['workers']} | {got['rss_kb'] / 1024:.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
