"""vCenter latency and catch-up: ``python -m bench.vcenter [--ops 200]``.

Against govmomi's simulator (scripts/build-vcsim), it measures

* latency: a power operation's task completion (the task's `completeTime`)
  to the handler's start, over `--ops` operations at random gaps, for veba
  (`veba serve --vcenter ...`, a python3-http function) and for the peer
  design, a VEBA-style ReadNextEvents loop (bench/vcenter/peer.py);
* catch-up: a backlog of 1,000 events made while the reader was down,
  ingested on start (veba: read and committed to its log; peer: read).

Writes docs/benchmarks-vcenter.md and bench/results/vcenter-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT, percentile
from bench.procs import Managed, stop_all
from bench.report import machine
from bench.vcenter.peer import VebaStyleLoop

VEBA = Path(sys.executable).parent / "veba"
FN_DIR = Path(__file__).resolve().parent / "fn"
USER, PASSWORD = "user", "pass"
POWER = ("VmPoweredOnEvent", "VmPoweredOffEvent")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


# -- the simulator ----------------------------------------------------------------


class Sim:
    def __init__(self, workdir: Path) -> None:
        import subprocess

        built = subprocess.run(
            [str(REPO_ROOT / "scripts" / "build-vcsim")], capture_output=True, text=True, check=True
        )
        binary = built.stdout.strip().splitlines()[-1]
        self.port = free_port()
        url_file = workdir / "vcsim.url"
        self.proc = Managed(
            "vcsim",
            [binary, "-listen", f"127.0.0.1:{self.port}", "-url-file", str(url_file)],
            env=dict(os.environ),
            log=workdir / "vcsim.log",
            cwd=workdir,
        )
        wait_for(url_file.exists, 30, "the simulator")
        self.url = f"http://127.0.0.1:{self.port}/sdk"
        from pyVim.connect import SmartConnect
        from pyVmomi import vim

        self.si = SmartConnect(
            host="127.0.0.1", port=self.port, user=USER, pwd=PASSWORD, protocol="http",
            disableSslCertValidation=True,
        )  # fmt: skip
        content = self.si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True
        )
        self.vms = sorted(view.view, key=lambda vm: vm._moId)
        self.power = {vm._moId: vm.runtime.powerState for vm in self.vms}
        self._next = 0

    def power_op(self) -> tuple[str, str, float]:
        """One power operation to completion: (event class, VM, task completeTime)."""
        vm = self.vms[self._next % len(self.vms)]
        self._next += 1
        if self.power[vm._moId] == "poweredOn":
            task, subject, state = vm.PowerOffVM_Task(), "VmPoweredOffEvent", "poweredOff"
        else:
            task, subject, state = vm.PowerOnVM_Task(), "VmPoweredOnEvent", "poweredOn"
        info = task.info  # this simulator runs the task within the call
        if info.state != "success":
            raise RuntimeError(f"power operation failed: {info.error}")
        self.power[vm._moId] = state
        return subject, vm._moId, info.completeTime.timestamp()

    def stop(self) -> None:
        self.proc.stop()


# -- veba ---------------------------------------------------------------------------


class Veba:
    def __init__(self, sim: Sim, workdir: Path) -> None:
        self.sim = sim
        self.data_dir = workdir / "veba-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = workdir / "starts.txt"
        self.workdir = workdir
        self.proc: Managed | None = None

    def start(self) -> None:
        env = {**os.environ, "VC_PASSWORD": PASSWORD}
        self.proc = Managed(
            "veba",
            [str(VEBA), "serve", "--data-dir", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}",
             "--vcenter", f"http://{USER}@127.0.0.1:{self.sim.port}/sdk",
             "--vcenter-password-env", "VC_PASSWORD", "--log-level", "warning"],
            env=env, log=self.workdir / "veba.log", cwd=self.workdir,
        )  # fmt: skip
        wait_for(self._healthy, 60, "veba serve")

    def _healthy(self) -> bool:
        assert self.proc is not None
        self.proc.check_alive()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict[str, Any]:
        token = (self.data_dir / "token").read_text().strip()
        r = httpx.get(
            f"{self.url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        (provider,) = [p for p in r.json()["providers"] if p["type"] == "vcenter"]
        return dict(provider)

    def deploy(self) -> None:
        import subprocess

        import yaml

        stack = self.workdir / "stack.yml"
        stack.write_text(
            yaml.safe_dump(
                {
                    "version": 1.0,
                    "provider": {"name": "openfaas", "gateway": self.url},
                    "functions": {
                        "starts": {
                            "lang": "python3-http",
                            "handler": str(FN_DIR),
                            "annotations": {"topic": ",".join(POWER)},
                            "environment": {"OUT": str(self.out)},
                        }
                    },
                }
            )
        )
        env = {**os.environ, "VEBA_DATA_DIR": str(self.data_dir), "VEBA_URL": self.url}
        subprocess.run([str(VEBA), "up", "-f", str(stack)], env=env, check=True, timeout=600)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def starts(self) -> list[tuple[int, str, str, float]]:
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            key, subject, vm, at = line.split()
            rows.append((int(key), subject, vm, float(at)))
        return sorted(rows)


# -- measuring ---------------------------------------------------------------------


def run_ops(sim: Sim, count: int, rng: random.Random) -> list[tuple[str, str, float]]:
    ops = []
    for _ in range(count):
        time.sleep(rng.uniform(0.05, 0.25))
        ops.append(sim.power_op())
    return ops


def latencies(
    ops: list[tuple[str, str, float]], starts: list[tuple[str, str, float]]
) -> list[float]:
    """Match the i-th operation with the i-th handler start (one event each, in order)."""
    if len(starts) != len(ops):
        raise RuntimeError(f"{len(ops)} operations but {len(starts)} handler starts")
    out = []
    for (subject, vm, done), (got_subject, got_vm, started) in zip(ops, starts, strict=True):
        if (subject, vm) != (got_subject, got_vm):
            raise RuntimeError(f"operation {subject} {vm} was handled as {got_subject} {got_vm}")
        out.append((started - done) * 1000)
    return out


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "all_ms": [round(v, 1) for v in values],
        "p50_ms": round(percentile(values, 50), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
    }


def measure_veba(sim: Sim, workdir: Path, ops_count: int, seed: int) -> dict[str, Any]:
    veba = Veba(sim, workdir)
    try:
        veba.start()
        veba.deploy()
        wait_for(lambda: veba.status()["state"] == "following", 60, "the provider")
        warm = run_ops(sim, 5, random.Random(seed + 1))
        wait_for(lambda: len(veba.starts()) >= len(warm), 60, "the warm-up events")
        skip = len(veba.starts())
        log(f"veba: {ops_count} power operations")
        ops = run_ops(sim, ops_count, random.Random(seed))
        wait_for(lambda: len(veba.starts()) >= skip + ops_count, 120, "every handler start")
        got = [(s, vm, at) for _, s, vm, at in veba.starts()[skip:]]
        latency = summary(latencies(ops, got))

        log("veba: stop, 500 power operations (1,000 events), start")
        veba.stop()
        backlog_ops = [sim.power_op() for _ in range(500)]
        started = time.monotonic()
        veba.start()
        status = wait_for(
            lambda: (s := veba.status())["last_catch_up"] and s["state"] == "following" and s,
            120,
            "the catch-up",
        )
        wall = time.monotonic() - started
        catch = status["last_catch_up"]
        wait_for(
            lambda: len(veba.starts()) >= skip + ops_count + len(backlog_ops),
            300,
            "the backlog's handler starts",
        )
        return {
            "latency": latency,
            "catch_up": {
                "events": catch["events"],
                "seconds": catch["seconds"],
                "events_per_s": round(catch["events"] / catch["seconds"]),
                "from_process_start_s": round(wall, 2),
            },
        }
    finally:
        veba.stop()


def measure_peer(sim: Sim, ops_count: int, seed: int) -> dict[str, Any]:
    loop = VebaStyleLoop("127.0.0.1", sim.port, USER, PASSWORD)
    starts: list[tuple[str, str, float]] = []

    def on_event(event: Any, at: float) -> None:
        subject = type(event)._wsdlName
        if subject in POWER:
            starts.append((subject, event.vm.vm._moId, at))

    thread = threading.Thread(target=loop.follow, args=(on_event,), daemon=True)
    thread.start()
    try:
        log(f"peer: {ops_count} power operations")
        ops = run_ops(sim, ops_count, random.Random(seed))
        wait_for(lambda: len(starts) >= ops_count, 60, "the peer to see every event")
        latency = summary(latencies(ops, starts[:ops_count]))
    finally:
        loop.stop()
        thread.join(timeout=10)
    log("peer: 1,000-event backlog")
    newest = max(e.key for e in loop.content.eventManager.CreateCollectorForEvents(
        __import__("pyVmomi").vim.event.EventFilterSpec(maxCount=1)).latestPage)  # fmt: skip
    for _ in range(500):
        sim.power_op()
    seconds = loop.catch_up(newest, 1000)
    loop.close()
    return {
        "latency": latency,
        "catch_up": {"events": 1000, "seconds": round(seconds, 2),
                     "events_per_s": round(1000 / seconds)},
    }  # fmt: skip


def brief(measured: dict[str, Any]) -> dict[str, Any]:
    latency = {k: v for k, v in measured["latency"].items() if k != "all_ms"}
    return {"latency": latency, "catch_up": measured["catch_up"]}


def render(result: dict[str, Any]) -> str:
    v, p = result["veba"], result["peer"]
    m = result["machine"]
    return "\n".join(
        [
            "# Benchmarks: vCenter provider",
            "",
            "Written by the bench; rerun it rather than editing this file:",
            "",
            "```",
            f".venv/bin/python -m bench.vcenter --ops {result['ops']}",
            "```",
            "",
            f"- Date: {result['date']}",
            f"- Machine: nproc {m['nproc']}, {m['cpu']}, {m['memory']}, {m['os']}; "
            "shared with other work, so expect noise between runs",
            "- Load average (1/5/15 min) before: "
            + " / ".join(map(str, result["load_before"]))
            + "; after: "
            + " / ".join(map(str, result["load_after"])),
            f"- {m['python']}; govmomi simulator 0.24.2 (Debian), pyVmomi {result['pyvmomi']}",
            "",
            "## Latency: power operation's task completion to handler start",
            "",
            f"{result['ops']} power operations, one at a time, 50-250 ms apart (uniform, seeded);"
            " p50 and p99 are nearest-rank.",
            "",
            "| Design | p50 (ms) | p99 (ms) | max (ms) |",
            "|---|---:|---:|---:|",
            f"| veba (WaitForUpdatesEx wake-up, 2 staggered waiters) | {v['latency']['p50_ms']}"
            f" | {v['latency']['p99_ms']} | {v['latency']['max_ms']} |",
            f"| VEBA-style loop (ReadNextEvents every 1 s, backoff to 5 s) | {p['latency']['p50_ms']}"
            f" | {p['latency']['p99_ms']} | {p['latency']['max_ms']} |",
            "",
            "## Catch-up after downtime: a backlog of 1,000 events",
            "",
            "| Design | Events | Seconds | Events/s |",
            "|---|---:|---:|---:|",
            f"| veba (read + committed to the log) | {v['catch_up']['events']}"
            f" | {v['catch_up']['seconds']} | {v['catch_up']['events_per_s']:,} |",
            f"| VEBA-style loop (read only) | {p['catch_up']['events']}"
            f" | {p['catch_up']['seconds']} | {p['catch_up']['events_per_s']:,} |",
            "",
            f"veba's figure is the provider's own timing (history read, mapping, commits); from"
            f" `veba serve` starting to the backlog committed took"
            f" {v['catch_up']['from_process_start_s']} s (process start, login included).",
            "",
            "## Method",
            "",
            "- **Simulator.** `scripts/build-vcsim` (govmomi 0.24.2 from Debian), one process,"
            " VPX model, plain HTTP on 127.0.0.1. Its PropertyCollector answers"
            " WaitForUpdatesEx only at 250 ms ticks counted from each request, so one waiter"
            " wakes up to 250 ms late; veba runs two waiters half a tick apart.",
            "- **Operations.** PowerOff/PowerOn through pyVmomi, alternating over the VMs; the"
            " simulator completes the task within the call; the start of the clock is the"
            " task's `info.completeTime` (same machine clock as the handler's `time.time()`).",
            "- **veba.** `veba serve --vcenter http://user@127.0.0.1:PORT/sdk"
            " --vcenter-password-env VC_PASSWORD`; a python3-http function subscribed to"
            " VmPoweredOnEvent,VmPoweredOffEvent records `time.time()` as its first statement."
            " The latency includes the wake-up, mapping, the durable commit, routing, dispatch"
            " and the function invocation.",
            "- **Peer.** `bench/vcenter/peer.py`: VEBA's loop (1 s ticker, backoff 1/2/4/5 s when"
            " a read is empty, reset on events) with pyVmomi; handler start = the moment the"
            " loop has the event in hand (no invocation, which favours the peer). On this"
            " simulator ReadNextEvents never returns events newer than its first page, so the"
            " live loop reads `latestPage` (100 newest) and keeps keys above the last seen."
            " Catch-up is ReadNextEvents(100) per tick on a fresh collector, as VEBA resumes.",
            "- **Catch-up.** The reader is down while 500 power operations make 1,000 events,"
            " then starts.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vcenter", description=__doc__)
    parser.add_argument("--ops", type=int, default=200, help="power operations per design")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks-vcenter.md")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ops": args.ops,
        "machine": machine(),
        "pyvmomi": metadata.version("pyvmomi"),
    }
    with tempfile.TemporaryDirectory(prefix="veba-bench-vc-") as tmp:
        workdir = Path(tmp)
        try:
            sim = Sim(workdir)
            try:
                result["veba"] = measure_veba(sim, workdir, args.ops, args.seed)
                log(f"veba: {brief(result['veba'])}")
                result["peer"] = measure_peer(sim, args.ops, args.seed)
                log(f"peer: {brief(result['peer'])}")
            finally:
                sim.stop()
        finally:
            stop_all()
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (results / f"vcenter-{stamp}.json").write_text(json.dumps(result, indent=2))
    args.out.write_text(render(result))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
