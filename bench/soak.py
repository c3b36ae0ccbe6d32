"""Soak: hold N events/s against a real `veba serve` for M minutes and watch it.

    .venv/bin/python -m bench.soak --rate 1000 --minutes 30

Starts `veba serve` on a fresh data dir, deploys one no-op function (two warm
workers, topic `*`) that appends each event id it gets to a file, and sends
VEBA's VmPoweredOffEvent sample at a fixed rate (batches of --batch events,
paced at absolute deadlines, so a slow moment is caught up rather than lost).
Every --every seconds it samples the appliance process: RSS, open file
descriptors (/proc/PID/fd), its workers' RSS, the backlog (pending + leased
deliveries, from GET /api/v1/functions/soak) and the log's size on disk. At the
end it stops sending, waits for the backlog to drain and compares what the
function received with what the webhook acknowledged: lost and duplicate events.

The log keeps delivered events for --retention (2 minutes by default, so a long
run shows whether pruning keeps the log and the process flat; `7d` is the
appliance's own default). Not run in CI. Writes bench/results/soak-<time>.json
and prints a summary to paste into docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT, SAMPLE_EVENT, env_with
from bench.procs import Managed

VEBA = Path(sys.executable).parent / "veba"
FUNCTION = "soak"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
HANDLER = """
import os

_OUT = os.environ["SOAK_OUT"]


def handle(event, ctx):
    # One line per event; O_APPEND writes of one line are atomic across workers.
    fd = os.open(_OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (event.id + "\\n").encode())
    finally:
        os.close(fd)
"""
STACK = """version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  soak:
    lang: veba-cloudevent
    handler: ./soak
    annotations:
      topic: "*"
    labels:
      com.openfaas.scale.min: "2"
    delivery:
      maxInflight: 64
    environment:
      SOAK_OUT: {out}
"""


@dataclass
class Sample:
    at: float  # seconds since sending started
    sent: int  # events acknowledged so far
    rss_mb: float  # the appliance process
    fds: int  # its open file descriptors
    workers_rss_mb: float  # all its worker processes together
    backlog: int | None  # pending + leased deliveries; None if the API did not answer
    log_mb: float  # events.db and its WAL on disk


@dataclass
class Sender:
    """Paced posting to the webhook from several threads."""

    url: str
    token: str
    rate: float
    batch: int
    seconds: float
    threads: int = 2
    acked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    max_lag: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = 0.0
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sample = json.loads(SAMPLE_EVENT.read_text())
        ticks = int(self.seconds * self.rate / self.batch)
        self.started = time.monotonic()

        def worker(first: int) -> None:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": BATCH_CONTENT_TYPE}
            with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as http:
                for tick in range(first, ticks, self.threads):
                    if self.stopped.is_set():
                        return
                    due = self.started + tick * self.batch / self.rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        with self.lock:
                            self.max_lag = max(self.max_lag, -wait)
                    events = [
                        dict(sample, id=str(uuid.uuid4()), data=dict(sample["data"], Key=tick))
                        for _ in range(self.batch)
                    ]
                    try:
                        r = http.post("/webhook", content=json.dumps(events), headers=headers)
                        ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                    except httpx.HTTPError as exc:
                        ok, why = False, f"{type(exc).__name__}: {exc}"
                    with self.lock:
                        if ok:
                            self.acked.extend(e["id"] for e in events)
                        else:
                            self.errors.append(why)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(self.threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def sample(serve: Managed, api: httpx.Client, data_dir: Path, sender: Sender) -> Sample:
    pid = serve.pid
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    try:
        backlog: int | None = int(api.get(f"/api/v1/functions/{FUNCTION}").json()["pending"])
    except (httpx.HTTPError, KeyError, ValueError):
        backlog = None
    log_bytes = sum(p.stat().st_size for p in data_dir.glob("events.db*") if p.is_file())
    return Sample(
        at=round(time.monotonic() - sender.started, 1),
        sent=sender.count,
        rss_mb=round(rss_mb(pid), 1),
        fds=fds,
        workers_rss_mb=round(sum(rss_mb(c) for c in children(pid)), 1),
        backlog=backlog,
        log_mb=round(log_bytes / 2**20, 1),
    )


def received(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def slope_per_minute(samples: list[Sample], attr: str) -> float:
    """Least-squares growth of `attr` per minute over the second half of the run."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    xs = [s.at / 60 for s in half]
    ys = [float(getattr(s, attr)) for s in half]
    return statistics.linear_regression(xs, ys).slope


def summarise(
    args: argparse.Namespace,
    sender: Sender,
    samples: list[Sample],
    got: list[str],
    drained: float | None,
) -> dict[str, Any]:
    acked = set(sender.acked)
    seen = set(got)
    duration = samples[-1].at if samples else 0.0
    rss = [s.rss_mb for s in samples]
    fds = [s.fds for s in samples]
    backlogs = [s.backlog for s in samples if s.backlog is not None]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rate": args.rate,
        "minutes": args.minutes,
        "batch": args.batch,
        "retention": args.retention,
        "acknowledged": len(acked),
        "achieved_rate": round(len(acked) / (args.minutes * 60), 1),
        "send_errors": len(sender.errors),
        "first_errors": sender.errors[:3],
        "sender_max_lag_s": round(sender.max_lag, 3),
        "lost": len(acked - seen),
        "duplicates": len(got) - len(seen),
        "drained_after_s": drained,
        "rss_mb": {"first": rss[0], "max": max(rss), "last": rss[-1]} if rss else {},
        "rss_slope_mb_per_min_2nd_half": round(slope_per_minute(samples, "rss_mb"), 2),
        "workers_rss_mb_last": samples[-1].workers_rss_mb if samples else None,
        "fds": {"min": min(fds), "max": max(fds), "last": fds[-1]} if fds else {},
        "backlog": {"max": max(backlogs), "last": backlogs[-1]} if backlogs else {},
        "log_mb": {"max": max(s.log_mb for s in samples), "last": samples[-1].log_mb}
        if samples
        else {},
        "duration_s": duration,
        "load_avg": os.getloadavg(),
        "samples": [asdict(s) for s in samples],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"soak {result['date']}: {result['rate']:g} events/s for {result['minutes']:g} min"
        f" (batches of {result['batch']}, retention {result['retention']})",
        f"  acknowledged {result['acknowledged']:,} ({result['achieved_rate']:g}/s),"
        f" send errors {result['send_errors']}, sender max lag {result['sender_max_lag_s']} s",
        f"  lost {result['lost']}, duplicates {result['duplicates']},"
        f" backlog drained {result['drained_after_s']} s after the last send",
        f"  appliance RSS MB first/max/last {result['rss_mb']}, growth over the 2nd half"
        f" {result['rss_slope_mb_per_min_2nd_half']} MB/min; workers' RSS last"
        f" {result['workers_rss_mb_last']} MB",
        f"  open fds {result['fds']}, backlog {result['backlog']}, log on disk MB {result['log_mb']}",
        "",
        "| t (s) | acknowledged | RSS (MB) | fds | workers RSS (MB) | backlog | log (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["samples"]:
        lines.append(
            f"| {s['at']:g} | {s['sent']:,} | {s['rss_mb']} | {s['fds']} |"
            f" {s['workers_rss_mb']} | {s['backlog']} | {s['log_mb']} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1000.0, help="events per second (1000)")
    p.add_argument("--minutes", type=float, default=30.0, help="how long to send (30)")
    p.add_argument("--batch", type=int, default=10, help="events per POST (10)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples (10)")
    p.add_argument("--retention", default="2m", help="veba serve --retention (2m)")
    p.add_argument("--drain", type=float, default=300.0, help="seconds to wait for the backlog")
    p.add_argument("--out", type=Path, help="JSON result (bench/results/soak-<time>.json)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.batch < 1 or args.every <= 0:
        p.error("--rate, --minutes, --batch and --every must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = Path(tempfile.mkdtemp(prefix="veba-soak-"))
    work.chmod(0o755)  # the function, a user of its own under a root appliance, appends here
    data_dir, out = work / "data", work / "received.txt"
    out.touch()
    out.chmod(0o666)
    (work / "soak").mkdir()
    (work / "soak" / "handler.py").write_text(HANDLER)
    (work / "soak" / "requirements.txt").write_text("")
    (work / "stack.yml").write_text(STACK.format(out=out))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = Managed(
        "veba serve",
        [str(VEBA), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
         "--no-simulator", "--retention", args.retention],
        env=env_with(), log=work / "serve.log", cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            serve.check_alive()
            try:
                if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"veba serve did not start; see {work / 'serve.log'}")
            time.sleep(0.2)
        token = (data_dir / "token").read_text().strip()
        up = Managed(
            "veba up",
            [str(VEBA), "up", "-f", str(work / "stack.yml"), "--gateway", url],
            env=env_with(VEBA_DATA_DIR=str(data_dir)), log=work / "up.log", cwd=work,
        )  # fmt: skip
        if up.run_to_end(600) != 0:
            raise SystemExit(f"veba up failed:\n{up.log_tail()}")

        sender = Sender(url, token, args.rate, args.batch, args.minutes * 60)
        sending = threading.Thread(target=sender.run)
        api = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30, trust_env=False
        )
        samples: list[Sample] = []
        print(f"soak: {args.rate:g} events/s for {args.minutes:g} min; work dir {work}", flush=True)
        sending.start()
        next_at = time.monotonic()
        while sending.is_alive():
            serve.check_alive()
            if time.monotonic() >= next_at:
                s = sample(serve, api, data_dir, sender)
                samples.append(s)
                print(f"  {json.dumps(asdict(s))}", flush=True)
                next_at += args.every
            sending.join(timeout=max(0.0, min(1.0, next_at - time.monotonic())))
        samples.append(sample(serve, api, data_dir, sender))
        finished = time.monotonic()
        drained = None
        while time.monotonic() - finished < args.drain:
            if len(set(received(out))) >= len(set(sender.acked)):
                drained = round(time.monotonic() - finished, 1)
                break
            time.sleep(0.5)
        samples.append(sample(serve, api, data_dir, sender))
        api.close()
        result = summarise(args, sender, samples, received(out), drained)
    finally:
        serve.stop()
    ok = result["lost"] == 0 and not result["send_errors"]
    if ok:  # the log can be gigabytes; keep it (and the serve log) only to look into a failure
        shutil.rmtree(work, ignore_errors=True)
    path = args.out or REPO_ROOT / "bench" / "results" / f"soak-{int(time.time())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"\nwritten to {path}" + ("" if ok else f"; data dir and logs kept in {work}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
