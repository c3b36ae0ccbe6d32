"""The tally behind JetStream's counts(): statuses moved, not recounted."""

from __future__ import annotations

from veba.eventlog.jetstream._tally import StatusMap, Tally, notice, notice_ids


def test_a_state_moves_its_delivery_from_one_count_to_another() -> None:
    tally = Tally()
    for delivery_id in (1, 2, 3):
        tally.fold(delivery_id, "f", "leased")
    tally.fold(7, "g", "pending")
    tally.fold(1, "f", "delivered")
    tally.fold(2, "f", "dead")
    tally.fold(2, "f", "pending")  # redriven
    assert tally.counts() == {"f": {"leased": 1, "delivered": 1, "pending": 1}, "g": {"pending": 1}}
    tally.forget(7)
    tally.forget(99)  # never seen: nothing to take away
    assert tally.counts() == {"f": {"leased": 1, "delivered": 1, "pending": 1}}
    assert tally.statuses.size == 3


def test_the_map_keeps_two_bytes_an_id_and_frees_what_retention_emptied() -> None:
    statuses = StatusMap()
    for delivery_id in range(1, 200_001):
        statuses.set(delivery_id, 9)
    assert statuses.size == 200_000 and len(statuses._chunks) == 4
    assert statuses.get(150_000) == 9 and statuses.get(300_000) == 0
    for delivery_id in range(1, 131_072):  # the first two chunks, emptied
        statuses.set(delivery_id, 0)
    assert len(statuses._chunks) == 2 and statuses.size == 200_000 - 131_071
    assert statuses.get(5) == 0
    statuses.set(5, 0)  # clearing what is not there makes no chunk
    assert len(statuses._chunks) == 2


def test_a_notice_carries_the_ids_of_deleted_states() -> None:
    assert notice_ids(notice([3, 1, 2])) == [3, 1, 2]
    assert notice_ids(b"{}") == []
