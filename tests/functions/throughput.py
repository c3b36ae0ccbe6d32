"""Throughput sanity check of one function pool (not a test; run by hand).

.venv/bin/python tests/functions/throughput.py [--workers 1] [--pipeline 8] [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from veba.functions import FunctionPool, Invocation, ensure_venv

EVENT = (
    b'{"specversion":"1.0","id":"1","source":"https://vc/sdk","type":"com.vmware.event.router/event",'
    b'"subject":"VmPoweredOnEvent","datacontenttype":"application/json","data":{"Key":1}}'
)


async def run(workers: int, pipeline: int, n: int, lang: str, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        handler = Path(tmp) / "noop"
        handler.mkdir()
        args = "event, ctx" if lang == "veba-cloudevent" else "req"
        (handler / "handler.py").write_text(f"def handle({args}):\n    return None\n")
        python = ensure_venv(handler, Path(tmp) / "cache", lambda line: None)
        pool = FunctionPool(
            "noop",
            python=python,
            handler_dir=handler,
            lang=lang,
            workers=workers,
            pipeline=pipeline,
            log_sink=lambda *a: None,
        )
        await pool.start()
        inv = Invocation(EVENT, {"content-type": "application/cloudevents+json"})
        latencies: list[float] = []

        async def client(count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                outcome = await pool.invoke(inv, timeout=10)
                latencies.append(time.perf_counter() - t0)
                assert outcome.ok, outcome

        await asyncio.gather(*(client(100) for _ in range(concurrency)))  # warm up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(n // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        await pool.stop()
    latencies.sort()
    done = len(latencies)
    print(
        f"{lang} workers={workers} pipeline={pipeline} concurrency={concurrency}: "
        f"{done / elapsed:,.0f} invocations/s, p50 {latencies[done // 2] * 1e3:.2f} ms, "
        f"p99 {latencies[int(done * 0.99)] * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--lang", default="veba-cloudevent")
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    coro = run(args.workers, args.pipeline, args.n, args.lang, args.concurrency)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
