"""Throughput with the dashboard open vs without, on one appliance, same run:

    .venv/bin/python -m bench.dashboard [--rounds 3] [--events 20000]

Starts `veba serve` and the no-op function as `python -m bench` does (the
veba driver), then, each round, measures throughput (events handed over in
batches of 100 by 4 threads, first send to the last handler start) in three
ways: nothing watching ("closed"); the live stream read as the page reads it
(`rows=200`) and the overview polled every 2 s, by a thread of this process
("stream"): the appliance's own cost; headless Chromium (Debian's, via
Playwright) signed in on `/` ("open"), which also spends the machine's CPU on
the browser. The order rotates between rounds; medians are reported. Writes
the section under the KEPT marker of docs/benchmarks.md, which `python -m
bench` keeps when it rewrites the file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.__main__ import KEPT
from bench.common import REPO_ROOT
from bench.procs import stop_all
from bench.veba.driver import VebaDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECTION = "## Dashboard open vs closed"


class Dashboard:
    """A signed-in headless Chromium on `/`, following the live stream."""

    def __init__(self, url: str, token: str) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        self.page = self.browser.new_page()
        self.page.goto(f"{url}/")
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{url}/")
        self.page.wait_for_function("() => document.getElementById('live-state').textContent")

    def shown(self) -> int:
        return int(self.page.evaluate("() => document.querySelectorAll('#events li').length"))

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


class Watcher:
    """What the page asks of the appliance, without a browser: the live stream
    (200 rows a frame at most) read to the end, and the overview every 2 s."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._stop = threading.Event()
        self.frames = 0
        self._client = httpx.Client(base_url=url, headers=headers, timeout=None, trust_env=False)
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        with self._client.stream("GET", "/api/v1/events/stream", params={"rows": 200}) as r:
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                self.frames += line.startswith("event: events")

    def _poll(self) -> None:
        while not self._stop.wait(2.0):
            self._client.get("/api/v1/overview")

    def shown(self) -> int:
        return self.frames

    def close(self) -> None:
        self._stop.set()
        self._threads[1].join(timeout=10)
        self._client.close()


MODES = ("closed", "stream", "open")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    driver = VebaDriver()
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        driver.start()
        assert driver.client is not None
        url = str(driver.client.base_url).rstrip("/")
        token = driver.headers["Authorization"].removeprefix("Bearer ")
        for round_no in range(args.rounds):
            order = MODES[round_no % 3 :] + MODES[: round_no % 3]
            for mode in order:
                dashboard: Dashboard | Watcher | None = None
                if mode == "open":
                    dashboard = Dashboard(url, token)
                elif mode == "stream":
                    dashboard = Watcher(url, driver.headers)
                    time.sleep(1)  # connected
                try:
                    result = driver.throughput(args.events)
                    if dashboard is not None and dashboard.shown() == 0:
                        raise RuntimeError("the dashboard showed no event")
                finally:
                    if dashboard is not None:
                        dashboard.close()
                figures[mode].append(result.events_per_s)
                print(
                    f"{time.strftime('%H:%M:%S')} round {round_no + 1} dashboard {mode}:"
                    f" {result.events_per_s:,.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        driver.stop()
        stop_all()
    args.load_after = os.getloadavg()[0]
    _write(args, figures)
    return 0


def _write(args: argparse.Namespace, figures: dict[str, list[float]]) -> None:
    closed, streamed, opened = (statistics.median(figures[m]) for m in MODES)
    each = "; ".join(f"{m}: " + ", ".join(f"{v:,.0f}" for v in figures[m]) for m in MODES)
    section = "\n".join(
        [
            SECTION,
            "",
            f"`.venv/bin/python -m bench.dashboard --rounds {args.rounds} --events {args.events}`"
            f" ({datetime.now(UTC):%Y-%m-%d %H:%M UTC}): one appliance, throughput as above"
            f" ({args.events:,} events in batches of 100), each round three ways in rotating"
            " order: nothing watching; the page's requests (the live stream, 200 rows a frame,"
            " and the overview every 2 s) from a thread of the bench; headless Chromium signed"
            " in on `/`, on the same 2 CPUs as the appliance. Medians of the rounds. Load"
            f" average (1 min) {args.load_before:.1f} before, {args.load_after:.1f} after: on a"
            " shared machine, compare the spread of the rounds below before the medians.",
            "",
            "| Dashboard | Throughput (events/s) |",
            "|---|---:|",
            f"| closed | {closed:,.0f} |",
            f"| its requests only | {streamed:,.0f} ({(streamed - closed) / closed * 100:+.1f} %) |",
            f"| open in Chromium | {opened:,.0f} ({(opened - closed) / closed * 100:+.1f} %) |",
            "",
            f"Every round: {each}.",
            "",
        ]
    )
    text = args.out.read_text() if args.out.exists() else ""
    if KEPT not in text:
        text = text.rstrip("\n") + "\n\n" + KEPT + "\n"
    head, _, tail = text.partition(KEPT)
    if SECTION in tail:  # replace the previous figures, keep other sections
        before, _, rest = tail.partition(SECTION)
        following = rest.find("\n## ")
        tail = before + (rest[following + 1 :] if following >= 0 else "")
    args.out.write_text(head + KEPT + "\n\n" + section + tail.lstrip("\n"))
    print(section)


if __name__ == "__main__":
    sys.exit(main())
