"""The live feed (veba.feed): what a watcher gets, that a slow one costs bounded
memory and hears of its gap, and that closing ends every watcher's wait."""

from __future__ import annotations

import asyncio

from veba.eventlog import AppendResult
from veba.events import Event
from veba.feed import EventFilter, Feed, summary


def vm_event(n: int, subject: str = "VmPoweredOnEvent", vm: str = "web-01") -> Event:
    return Event(
        {
            "id": f"e-{n}",
            "source": "https://vc1.example/sdk",
            "type": "com.vmware.event.router/event",
            "subject": subject,
            "specversion": "1.0",
        },
        {"Vm": {"Name": vm}, "Host": {"Name": "esx-7"}, "FullFormattedMessage": "x" * 1000},
    )


def logged(events: list[Event], first_seq: int = 1) -> AppendResult:
    return AppendResult(
        len(events), 0, {}, tuple((first_seq + i, i) for i in range(len(events))), 100.0
    )


async def test_a_watcher_gets_what_its_filter_takes_in_log_order() -> None:
    feed = Feed()
    every = feed.watch()
    vms = feed.watch(EventFilter(type="poweredon", name="WEB"))
    events = [vm_event(1), vm_event(2, "VmPoweredOffEvent"), vm_event(3, vm="db-01")]
    events.append(vm_event(4, "DrsVmPoweredOnEvent", vm="web-02"))
    feed.publish(events, logged(events))
    assert await every.wait(1)
    assert [seq for seq, _, _ in every.take()[0]] == [1, 2, 3, 4]
    assert [e.id for _, _, e in vms.take()[0]] == ["e-1", "e-4"]
    assert EventFilter(source="VC2").matches(events[0]) is False


async def test_duplicates_are_not_shown_again() -> None:
    feed = Feed()
    watcher = feed.watch()
    events = [vm_event(1), vm_event(2)]
    feed.publish(events, AppendResult(1, 1, {}, ((9, 1),), 100.0))  # only the second was new
    assert [(seq, e.id) for seq, _, e in watcher.take()[0]] == [(9, "e-2")]


async def test_a_slow_watcher_keeps_the_newest_and_is_told_how_many_it_missed() -> None:
    feed = Feed(queue_size=100)
    watcher = feed.watch()
    events = [vm_event(n) for n in range(250)]
    feed.publish(events, logged(events))
    items, missed = watcher.take()
    assert missed == 150 and len(items) == 100 and items[-1][2].id == "e-249"
    assert watcher.take() == ([], 0)


async def test_closing_ends_every_wait_at_once_and_watchers_after_it() -> None:
    feed = Feed()
    watcher = feed.watch()
    waiting = asyncio.create_task(watcher.wait(60))
    await asyncio.sleep(0)
    feed.close()
    assert await asyncio.wait_for(waiting, 1) is True
    assert feed.closed and feed.watchers == 0
    assert await feed.watch().wait(60) is True  # a late stream ends at once too


def test_a_row_is_small_whatever_the_event_holds() -> None:
    row = summary(5, 100.0, vm_event(1))
    assert row["names"] == {"vm": "web-01", "host": "esx-7"}
    assert len(row["message"]) == 300 and row["subject"] == "VmPoweredOnEvent"


def test_nobody_watching_costs_nothing() -> None:
    feed = Feed()
    events = [vm_event(1)]
    feed.publish(events, logged(events))  # no watcher: no queue anywhere
    watcher = feed.watch()
    watcher.close()
    feed.publish(events, logged(events))
    assert watcher.take() == ([], 0) and feed.watchers == 0
