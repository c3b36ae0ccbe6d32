"""The built-in vCenter simulator: VEBA's event shapes, determinism, state, pacing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from veba.events import EVENT_TYPE_PREFIX, Event
from veba.providers import EventSink, Provider, SimulatorProvider, VCenterSimulator
from veba.providers.simulator import SimulationError

DATA = Path(__file__).parent.parent / "data"
COMMON_KEYS = [
    "Key", "ChainId", "CreatedTime", "UserName", "Datacenter", "ComputeResource", "Host",
    "Vm", "Ds", "Net", "Dvs", "FullFormattedMessage", "ChangeTag",
]  # fmt: skip
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def shape(value: Any) -> Any:
    """The structure of JSON data: keys kept, leaves replaced by their type, MoRef
    `Type`s kept (they are part of the contract)."""
    if isinstance(value, dict):
        return {k: v if k == "Type" else shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def stream(seed: int = 0, n: int = 3000, **options: Any) -> list[Event]:
    return VCenterSimulator(seed, **options).emit(n)


def first(events: Iterable[Event], subject: str) -> Event:
    return next(e for e in events if e.subject == subject)


# -- VEBA's shapes -----------------------------------------------------------------


def test_vm_powered_off_data_matches_vebas_sample() -> None:
    veba = load("vm-powered-off.data.json")
    ours = VCenterSimulator().sample("VmPoweredOffEvent").data
    assert list(ours) == list(veba)
    for field in ("Datacenter", "ComputeResource", "Host", "Vm"):
        assert shape(ours[field]) == shape(veba[field])
    assert ours["Ds"] is ours["Net"] is ours["Dvs"] is None
    assert ours["Template"] is False
    assert ours["Vm"]["Vm"]["Value"].startswith("vm-")
    assert ours["ComputeResource"]["ComputeResource"]["Value"].startswith("domain-c")
    assert ours["FullFormattedMessage"].endswith("is powered off")


def test_host_maintenance_data_matches_vebas_sample() -> None:
    veba = load("host-entered-maintenance.data.json")
    ours = VCenterSimulator().sample("EnteredMaintenanceModeEvent").data
    assert list(ours) == list(veba)
    assert shape(ours["Host"]) == shape(veba["Host"])
    assert ours["Vm"] is None
    assert re.fullmatch(r"esx\d+\.lab\.local", ours["Host"]["Name"])
    assert ours["ChainId"] < ours["Key"]  # the task opened the chain


def test_cloudevent_attributes_of_an_event() -> None:
    event = VCenterSimulator(source="https://vc01.example.com/sdk").sample("VmPoweredOnEvent")
    assert event.attributes["specversion"] == "1.0"
    assert event.type == EVENT_TYPE_PREFIX + "event"
    assert event.subject == "VmPoweredOnEvent"
    assert event.source == "https://vc01.example.com/sdk"
    assert event.time == event.data["CreatedTime"]
    assert event.attributes["datacontenttype"] == "application/json"
    assert "vsphereapiversion" in event.attributes


def test_eventex_matches_vebas_sample() -> None:
    veba = load("cloudevent-eventex-resource-exhaustion.json")
    subject = "vim.event.ResourceExhaustionStatusChangedEvent"
    ours = VCenterSimulator().sample(subject)
    assert (ours.type, ours.subject) == (veba["type"], veba["subject"])
    assert list(ours.data) == list(veba["data"])
    assert [a["Key"] for a in ours.data["Arguments"]] == [
        a["Key"] for a in veba["data"]["Arguments"]
    ]
    assert ours.data["UserName"].startswith("machine-")


@pytest.mark.parametrize("subject", ["com.vmware.cis.tagging.attach", "EventEx"])
def test_tagging_is_an_eventex_with_its_type_id_as_subject(subject: str) -> None:
    event = VCenterSimulator().sample(subject)
    assert event.type == EVENT_TYPE_PREFIX + "eventex"
    assert event.subject == event.data["EventTypeId"]
    assert list(event.data)[: len(COMMON_KEYS)] == COMMON_KEYS


def test_extended_event() -> None:
    event = VCenterSimulator().sample("ExtendedEvent")
    assert event.type == EVENT_TYPE_PREFIX + "extendedevent"
    assert event.subject == event.data["EventTypeId"]
    own = ["Message", "EventTypeId", "ManagedObject", "Data"]
    assert list(event.data)[len(COMMON_KEYS) :] == own
    assert event.data["ManagedObject"]["Type"] == "HostSystem"


def test_user_logout_matches_vebas_sample() -> None:
    veba = load("cloudevent-user-logout.json")
    ours = VCenterSimulator().sample("UserLogoutSessionEvent")
    assert (ours.type, ours.subject) == (veba["type"], veba["subject"])
    assert list(ours.data) == list(veba["data"])
    assert shape(ours.data) == shape(veba["data"])
    assert ours.data["LoginTime"] <= ours.data["CreatedTime"]


def test_class_specific_fields() -> None:
    sim = VCenterSimulator()
    migrated = sim.sample("VmMigratedEvent").data
    assert {"SourceHost", "SourceDatacenter", "SourceDatastore"} <= migrated.keys()
    assert migrated["SourceHost"]["Host"]["Value"] != migrated["Host"]["Host"]["Value"]
    alarm = sim.sample("AlarmStatusChangedEvent").data
    assert list(alarm)[len(COMMON_KEYS) :] == ["Alarm", "Source", "Entity", "From", "To"]
    assert alarm["Alarm"]["Alarm"]["Type"] == "Alarm"
    login = sim.sample("UserLoginSessionEvent").data
    assert list(login)[len(COMMON_KEYS) :] == ["IpAddress", "UserAgent", "Locale", "SessionId"]
    reconfigured = sim.sample("VmReconfiguredEvent").data
    assert {"NumCPUs", "MemoryMB", "DeviceChange"} <= reconfigured["ConfigSpec"].keys()
    assert set(reconfigured["ConfigChanges"]) == {"Modified", "Added", "Deleted"}
    task = sim.sample("TaskEvent").data
    assert task["Info"]["Key"] == task["Info"]["Task"]["Value"] == f"task-{task['Key']}"
    cloned = sim.sample("VmClonedEvent").data
    assert cloned["SourceVm"]["Vm"]["Value"] != cloned["Vm"]["Vm"]["Value"]


def test_every_event_has_the_common_fields_in_order() -> None:
    events = stream(n=3000)
    for event in events:
        assert list(event.data)[: len(COMMON_KEYS)] == COMMON_KEYS, event.subject
        assert RFC3339_Z.match(event.data["CreatedTime"])
        assert event.data["ChangeTag"] == ""
    # a long stream covers every class the simulator knows
    assert {e.subject for e in events} == set(VCenterSimulator.event_classes())


def test_event_classes_cover_the_brief() -> None:
    wanted = {
        "VmPoweredOnEvent", "DrsVmPoweredOnEvent", "VmStartingEvent", "VmStoppingEvent",
        "VmPoweredOffEvent", "VmSuspendedEvent", "VmCreatedEvent", "VmBeingCreatedEvent",
        "VmBeingClonedEvent", "VmClonedEvent", "VmRemovedEvent", "VmReconfiguredEvent",
        "VmMigratedEvent", "DrsVmMigratedEvent", "EnteringMaintenanceModeEvent",
        "EnteredMaintenanceModeEvent", "ExitMaintenanceModeEvent", "AlarmStatusChangedEvent",
        "com.vmware.cis.tagging.attach", "com.vmware.cis.tagging.detach",
        "vim.event.ResourceExhaustionStatusChangedEvent", "UserLoginSessionEvent",
        "UserLogoutSessionEvent",
    }  # fmt: skip
    assert wanted <= set(VCenterSimulator.event_classes())


# -- the inventory -------------------------------------------------------------------


def test_inventory_size_and_unique_stable_ids() -> None:
    sizes = {"datacenters": 2, "clusters_per_dc": 2, "hosts_per_cluster": 2, "vms_per_host": 3}
    world = VCenterSimulator(7, **sizes).world
    assert len(world.datacenters) == 2
    assert len(world.clusters) == 4
    assert len(world.hosts) == 8
    assert len(world.vms) == 24
    ids = [dc.id for dc in world.datacenters] + [c.id for c in world.clusters]
    ids += [h.id for h in world.hosts] + list(world.vms) + [d.id for d in world.datastores]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"host-\d+", h.id) for h in world.hosts)
    again = VCenterSimulator(7, **sizes)
    assert [(v.id, v.name) for v in again.world.vms.values()] == [
        (v.id, v.name) for v in world.vms.values()
    ]


# -- determinism, keys, time, chains -----------------------------------------------


def test_a_seed_reproduces_the_stream_exactly() -> None:
    assert [e.to_json() for e in stream(3, 1500)] == [e.to_json() for e in stream(3, 1500)]
    assert [e.to_json() for e in stream(3, 200)] != [e.to_json() for e in stream(4, 200)]


def test_a_clock_changes_only_the_times() -> None:
    wall = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    logical, clocked = stream(5, 500), stream(5, 500, clock=lambda: wall)

    def without_times(events: list[Event]) -> list[str]:
        text = [json.dumps([e.id, e.subject, e.data]) for e in events]
        text = [re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "T", t) for t in text]
        return [re.sub(r"login time: .*? [AP]M", "login time: T", t) for t in text]

    assert without_times(logical) == without_times(clocked)
    assert {e.data["CreatedTime"] for e in clocked} == {"2030-05-01T12:00:00Z"}


def test_keys_increase_by_one_and_times_never_go_back() -> None:
    events = VCenterSimulator(first_key=1000).emit(2000)
    assert [e.data["Key"] for e in events] == list(range(1000, 3000))
    times = [datetime.fromisoformat(e.data["CreatedTime"]) for e in events]
    assert times == sorted(times)
    assert len({e.id for e in events}) == len(events)


def test_chain_ids_point_at_the_first_event_of_the_chain() -> None:
    events = stream(n=3000)
    by_key = {e.data["Key"]: e for e in events}
    for event in events:
        head = by_key[event.data["ChainId"]]
        assert head.data["ChainId"] == head.data["Key"] <= event.data["Key"]
    # a user's power-off is a task: TaskEvent, VmStoppingEvent, VmPoweredOffEvent
    off = first(events, "VmPoweredOffEvent")
    chain = [e for e in events if e.data["ChainId"] == off.data["ChainId"]]
    assert [e.subject for e in chain] == ["TaskEvent", "VmStoppingEvent", "VmPoweredOffEvent"]
    assert chain[0].data["Info"]["Name"] == "PowerOffVM_Task"
    assert len({json.dumps(e.data["Vm"]) for e in chain}) == 1


def test_evacuations_get_their_own_chains_inside_the_maintenance_task() -> None:
    sim = VCenterSimulator(2)
    events = sim.next_events("EnteredMaintenanceModeEvent")
    task, entering, *middle, entered = events
    assert (task.subject, entering.subject, entered.subject) == (
        "TaskEvent",
        "EnteringMaintenanceModeEvent",
        "EnteredMaintenanceModeEvent",
    )
    assert entering.data["ChainId"] == entered.data["ChainId"] == task.data["Key"]
    host = entered.data["Host"]["Host"]["Value"]
    assert all(e.data["ChainId"] != task.data["Key"] for e in middle)
    assert all(e.data["SourceHost"]["Host"]["Value"] == host for e in middle[1::2])
    assert not [v for v in sim.world.vms.values() if v.host.id == host and v.power == "poweredOn"]


def test_emit_returns_exactly_n_and_keeps_the_rest_of_an_operation() -> None:
    whole = VCenterSimulator(1).emit(40)
    sim = VCenterSimulator(1)
    parts = sim.emit(7) + sim.emit(0) + sim.emit(5) + sim.emit(28)
    assert [e.id for e in parts] == [e.id for e in whole]
    assert len(sim.emit(3)) == 3


# -- state -------------------------------------------------------------------------


def test_state_is_consistent_over_a_long_stream() -> None:
    sim = VCenterSimulator(11, hosts_per_cluster=2, vms_per_host=3)
    power = {vm.id: vm.power for vm in sim.world.vms.values()}
    events: list[Event] = []
    while len(events) < 5000:  # whole operations, so the end state is comparable
        events += sim.next_events()
    in_maintenance: set[str] = set()
    removed: set[str] = set()
    requires = {
        "VmStartingEvent": "poweredOff",
        "VmResumingEvent": "suspended",
        "VmStoppingEvent": "poweredOn",
        "VmPoweredOffEvent": "poweredOn",
        "VmSuspendingEvent": "poweredOn",
        "VmSuspendedEvent": "poweredOn",
        "VmRemovedEvent": "poweredOff",
        "VmBeingHotMigratedEvent": "poweredOn",
        "DrsVmMigratedEvent": "poweredOn",
    }
    after = {
        "VmPoweredOnEvent": "poweredOn",
        "DrsVmPoweredOnEvent": "poweredOn",
        "VmPoweredOffEvent": "poweredOff",
        "VmSuspendedEvent": "suspended",
    }
    for event in events:
        data, subject = event.data, event.subject
        vm = data["Vm"]["Vm"]["Value"] if data["Vm"] else None
        host = data["Host"]["Host"]["Value"] if data["Host"] else None
        assert vm not in removed, f"{subject} for removed {vm}"
        if subject in ("VmCreatedEvent", "VmClonedEvent"):
            assert vm not in power
            power[vm] = "poweredOff"
        if subject in requires:
            assert power[vm] == requires[subject], f"{subject} on a {power[vm]} VM"
        if subject in ("VmPoweredOnEvent", "DrsVmPoweredOnEvent"):
            assert power[vm] in ("poweredOff", "suspended")
            assert host not in in_maintenance
        if subject in after:
            power[vm] = after[subject]
        if subject == "VmRemovedEvent":
            removed.add(vm)
        if subject in ("VmMigratedEvent", "DrsVmMigratedEvent"):
            assert host not in in_maintenance
        if subject == "EnteredMaintenanceModeEvent":
            assert host not in in_maintenance
            in_maintenance.add(host)
        if subject == "ExitMaintenanceModeEvent":
            in_maintenance.remove(host)
    assert {vm.id: vm.power for vm in sim.world.vms.values()} == {
        k: v for k, v in power.items() if k not in removed
    }


def test_alarm_status_follows_from_the_previous_change() -> None:
    last: dict[tuple[str, str], str] = {}
    for event in stream(12, 4000):
        if event.subject == "AlarmStatusChangedEvent":
            data = event.data
            key = (data["Alarm"]["Alarm"]["Value"], data["Entity"]["Entity"]["Value"])
            assert data["From"] == last.get(key, "green") != data["To"]
            last[key] = data["To"]


# -- resume --------------------------------------------------------------------------


def test_resume_continues_keys_from_a_checkpoint_reproducibly() -> None:
    before = VCenterSimulator(4).emit(300)
    restarted = VCenterSimulator(4)
    restarted.resume(301)
    after = restarted.emit(300)
    assert after[0].data["Key"] == 301
    assert {e.id for e in before}.isdisjoint(e.id for e in after)
    again = VCenterSimulator(4)
    again.resume(301)
    assert [e.to_json() for e in again.emit(300)] == [e.to_json() for e in after]


def test_vms_created_after_resume_get_new_ids() -> None:
    sim = VCenterSimulator(4)
    created = sim.next_events("VmCreatedEvent")[-1].data["Vm"]["Vm"]["Value"]
    restarted = VCenterSimulator(4)
    restarted.resume(sim.next_key)
    again = restarted.next_events("VmCreatedEvent")[-1].data["Vm"]["Vm"]["Value"]
    assert created != again
    assert again not in VCenterSimulator(4).world.vms


def test_resume_moves_the_logical_clock_when_told() -> None:
    sim = VCenterSimulator()
    sim.resume(50, at=datetime(2025, 6, 1, tzinfo=UTC))
    assert sim.emit(1)[0].data["CreatedTime"] > "2025-06-01T00:00:00"


# -- triggers and samples ------------------------------------------------------------


def test_trigger_powers_off_the_named_vm_and_refuses_twice() -> None:
    sim = VCenterSimulator()
    vm = next(v for v in sim.world.vms.values() if v.power == "poweredOn")
    events = sim.next_events("VmPoweredOffEvent", **{"Vm.Name": vm.name, "UserName": "LAB\\eve"})
    assert [e.subject for e in events] == ["TaskEvent", "VmStoppingEvent", "VmPoweredOffEvent"]
    vm_arg = {"Name": vm.name, "Vm": {"Type": "VirtualMachine", "Value": vm.id}}
    assert events[-1].data["Vm"] == vm_arg
    assert {e.data["UserName"] for e in events} == {"LAB\\eve"}
    assert vm.power == "poweredOff"
    key = sim.next_key
    with pytest.raises(SimulationError, match=vm.name):
        sim.next_events("VmPoweredOffEvent", **{"Vm.Name": vm.name})
    assert sim.next_key == key


def test_trigger_names_a_new_vm_and_sets_other_fields() -> None:
    sim = VCenterSimulator()
    events = sim.next_events("VmCreatedEvent", **{"Vm.Name": "web-99", "Template": True})
    created = events[-1]
    assert created.data["Vm"]["Name"] == "web-99"
    assert created.data["Template"] is True
    assert sim.world.find_vm("web-99") is not None
    assert [e.subject for e in events][1:] == ["VmBeingCreatedEvent", "VmCreatedEvent"]
    alarm = sim.next_events("AlarmStatusChangedEvent", **{"Entity.Name": "web-99", "To": "red"})
    assert (alarm[0].data["From"], alarm[0].data["To"]) == ("green", "red")
    with pytest.raises(SimulationError, match="already exists"):
        sim.next_events("VmCreatedEvent", **{"Vm.Name": "web-99"})


@pytest.mark.parametrize(
    "overrides",
    [{"Key": 5}, {"subject": "Other"}, {"Vm.Name.Deeper": "x"}, {"Vm.Name": "no-such-vm"}],
)
def test_a_refused_trigger_leaves_the_stream_as_it_was(overrides: dict[str, Any]) -> None:
    sim, untouched = VCenterSimulator(), VCenterSimulator()
    sim.emit(10), untouched.emit(10)
    with pytest.raises(SimulationError):
        sim.next_events("VmPoweredOnEvent", **overrides)
    assert [e.to_json() for e in sim.emit(50)] == [e.to_json() for e in untouched.emit(50)]


def test_unknown_event_class() -> None:
    with pytest.raises(SimulationError, match="unknown event class"):
        VCenterSimulator().next_events("NoSuchEvent")


def test_sample_every_class_without_touching_the_stream() -> None:
    sim = VCenterSimulator()
    for subject in sim.event_classes():
        assert sim.sample(subject).subject == subject
    assert sim.next_key == 1
    assert [e.to_json() for e in sim.emit(30)] == [e.to_json() for e in VCenterSimulator().emit(30)]


def test_sample_ids_never_collide_with_streamed_ones() -> None:
    sim = VCenterSimulator()
    sample = sim.sample("VmPoweredOnEvent")
    streamed = {e.data["Key"]: e.id for e in VCenterSimulator().emit(100)}
    assert sample.id != streamed[sample.data["Key"]]


def test_sample_overrides_by_dotted_path() -> None:
    sim = VCenterSimulator()
    for known in list(sim.world.vms.values())[:6]:  # whatever its power state
        for subject in ("VmPoweredOnEvent", "VmResumingEvent", "VmPoweredOffEvent"):
            event = sim.sample(subject, **{"Vm.Name": known.name})
            assert event.data["Vm"]["Vm"]["Value"] == known.id  # that VM, made ready for it
    made_up = sim.sample("VmPoweredOnEvent", **{"data.Vm.Name": "web-01x", "UserName": "ME"})
    assert made_up.data["Vm"]["Name"] == "web-01x"
    assert made_up.data["UserName"] == "ME"
    tagged = sim.sample(
        "com.vmware.cis.tagging.attach", **{"Arguments.0.Value": "gold", "subject": "tags"}
    )
    assert tagged.data["Arguments"][0] == {"Key": "Tag", "Value": "gold"}
    assert tagged.subject == "tags"
    assert sim.sample("VmPoweredOffEvent", **{"Ds.Name": "ds1"}).data["Ds"] == {"Name": "ds1"}


def test_sample_is_deterministic() -> None:
    a = VCenterSimulator(9).sample("DrsVmMigratedEvent")
    b = VCenterSimulator(9).sample("DrsVmMigratedEvent")
    assert a.to_json() == b.to_json()


# -- the provider -----------------------------------------------------------------------


class MemorySink:
    """An in-memory EventSink: publishes are durable at once, unless told to fail."""

    def __init__(
        self,
        checkpoints: dict[str, str] | None = None,
        *,
        failures: int = 0,
        checkpoint_failures: int = 0,
    ) -> None:
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []
        self.checkpoints = dict(checkpoints or {})
        self.failures = failures
        self.checkpoint_failures = checkpoint_failures
        self.attempts = 0
        self._changed = asyncio.Condition()

    async def publish(
        self, events: Sequence[Event], *, checkpoint: tuple[str, str] | None = None
    ) -> None:
        async with self._changed:
            self.attempts += 1
            self._changed.notify_all()
            if self.failures:
                self.failures -= 1
                raise ConnectionError("event log unavailable")
            self.events.extend(events)
            self.batches.append(list(events))
            if checkpoint is not None:
                self.checkpoints[checkpoint[0]] = checkpoint[1]

    async def checkpoint(self, provider_name: str) -> str | None:
        if self.checkpoint_failures:
            self.checkpoint_failures -= 1
            raise ConnectionError("event log unavailable")
        return self.checkpoints.get(provider_name)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)


@contextlib.asynccontextmanager
async def running(provider: SimulatorProvider, sink: MemorySink) -> AsyncIterator[None]:
    task = asyncio.create_task(provider.run(sink))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def keys(events: Iterable[Event]) -> list[int]:
    return [int(e.data["Key"]) for e in events]


def test_the_provider_fits_the_protocols() -> None:
    provider: Provider = SimulatorProvider()
    sink: EventSink = MemorySink()
    assert provider.name == "simulator"
    assert sink is not None


async def test_provider_publishes_with_the_next_key_as_checkpoint() -> None:
    provider, sink = SimulatorProvider(rate=200, seed=1), MemorySink()
    async with running(provider, sink):
        await sink.wait_for(lambda: len(sink.events) >= 20)
    assert keys(sink.events) == list(range(1, len(sink.events) + 1))
    assert sink.checkpoints["simulator"] == str(len(sink.events) + 1)
    status = provider.status()
    assert status["name"] == "simulator"
    assert status["type"] == "simulator"
    assert status["last_key"] == len(sink.events)
    assert status["events"] == len(sink.events)
    assert status["last_error"] is None
    assert status["connected"] is False  # it stopped


async def test_provider_resumes_from_its_checkpoint() -> None:
    sink = MemorySink()
    async with running(SimulatorProvider(rate=500, seed=3), sink):
        await sink.wait_for(lambda: len(sink.events) >= 10)
    published = len(sink.events)
    async with running(SimulatorProvider(rate=500, seed=3), sink):
        await sink.wait_for(lambda: len(sink.events) >= published + 10)
    assert keys(sink.events) == list(range(1, len(sink.events) + 1))
    assert len({e.id for e in sink.events}) == len(sink.events)

    elsewhere = MemorySink({"vc-sim": "5000"})
    async with running(SimulatorProvider("vc-sim", rate=500), elsewhere):
        await elsewhere.wait_for(lambda: len(elsewhere.events) >= 1)
    assert elsewhere.events[0].data["Key"] == 5000


async def test_provider_paces_at_its_rate() -> None:
    rate, wanted = 50.0, 50
    provider, sink = SimulatorProvider(rate=rate, seed=5), MemorySink()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running(provider, sink):
        await sink.wait_for(lambda: len(sink.events) >= wanted)
        elapsed = loop.time() - started
    # One operation can run ahead of its deadline by its own size (a few events).
    assert elapsed > (wanted - 20) / rate
    assert elapsed < 10 * wanted / rate


async def test_provider_rides_out_a_log_outage_and_catches_up_in_batches() -> None:
    provider = SimulatorProvider(rate=300, seed=6, burst=100)
    sink = MemorySink(failures=3, checkpoint_failures=1)
    async with running(provider, sink):
        await sink.wait_for(lambda: sink.attempts >= 2)
        assert provider.status()["last_error"] is not None
        assert provider.status()["connected"] is False
        await sink.wait_for(lambda: len(sink.batches) >= 3)
        assert provider.status()["connected"] is True
    assert keys(sink.events) == list(range(1, len(sink.events) + 1))
    assert provider.status()["last_error"] is None
    # the backlog built during the outage went out in batches of several operations
    assert max(len(b) for b in sink.batches) >= 20
    assert max(len(b) for b in sink.batches) <= 100 + 30  # a burst, plus one operation


async def test_trigger_while_paused() -> None:
    provider, sink = SimulatorProvider(rate=0, seed=1), MemorySink()
    provider.start_timeout = 0.01
    with pytest.raises(RuntimeError, match="not running"):
        await provider.trigger("VmPoweredOffEvent")
    provider.start_timeout = 5
    vm = next(v for v in provider.simulator.world.vms.values() if v.power == "poweredOn")
    async with running(provider, sink):  # a trigger waits for the provider to start
        events = await provider.trigger("VmPoweredOffEvent", **{"Vm.Name": vm.name})
        assert sink.events == events
        assert events[-1].data["Vm"]["Name"] == vm.name
        with pytest.raises(SimulationError):
            await provider.trigger("VmPoweredOffEvent", **{"Vm.Name": vm.name})
        more = await provider.trigger("UserLoginSessionEvent", count=3)
        assert [e.subject for e in more] == ["UserLoginSessionEvent"] * 3
        assert sink.events == events + more
        assert sink.checkpoints["simulator"] == str(more[-1].data["Key"] + 1)
        provider.set_rate(1000)  # wakes the paused loop
        await sink.wait_for(lambda: len(sink.events) >= len(events + more) + 5)
    assert keys(sink.events) == list(range(1, len(sink.events) + 1))


def test_provider_validates_its_options() -> None:
    with pytest.raises(ValueError):
        SimulatorProvider(rate=-1)
    with pytest.raises(ValueError):
        SimulatorProvider(burst=0)
    with pytest.raises(ValueError):
        VCenterSimulator(hosts_per_cluster=0)
