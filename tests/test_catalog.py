"""The event catalogue: pyVmomi's classes, vCenter's descriptions, the log's counts,
samples; its API (the app under uvicorn) and `veba catalog` (offline and online)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.support import ServedAppliance, free_port
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401
from veba import catalog
from veba.catalog._samples import _generic
from veba.cli import app as cli
from veba.cli.catalog import complete_topic
from veba.eventlog import SQLiteLog
from veba.events import EVENT_TYPE_PREFIX, Event, vsphere_event
from veba.providers.simulator import VCenterSimulator
from veba.providers.vcenter import VCenterEndpoint, VCenterProvider, to_govmomi

# What a vCenter's EventManager says, as the provider hands it over.
EVENT_INFO: list[dict[str, Any]] = [
    {
        "key": "VmPoweredOnEvent",
        "category": "info",
        "description": "VM powered on",
        "longDescription": None,
        "fullFormat": "{vm.name} on {host.name} in {datacenter.name} is powered on",
    },
    {
        "key": "EventEx",
        "category": "info",
        "description": "Created Library",
        "longDescription": '<EventLongDescription id="com.vmware.cl.CreateLibraryEvent"/>',
        "fullFormat": "com.vmware.cl.CreateLibraryEvent|Created Library {libraryName}",
    },
    {
        "key": "EventEx",
        "category": "error",
        "description": "Lost Network Connectivity",
        "fullFormat": "esx.problem.net.connectivity.lost|Lost network connectivity on {1}",
    },
    {
        "key": "ExtendedEvent",
        "category": "warning",
        "description": "Host license or evaluation period has expired",
        "fullFormat": "com.vmware.license.HostLicenseExpiredEvent|Host license expired",
    },
    {"key": "EventEx", "category": "info", "description": "no id", "fullFormat": ""},
    {"key": "FutureEvent", "category": "info", "description": "Newer than pyVmomi"},
]


def by_type(types: list[catalog.EventType]) -> dict[str, catalog.EventType]:
    return {t.type: t for t in types}


# -- pyVmomi's classes, offline -------------------------------------------------------------


def test_every_pyvmomi_event_class_is_listed_with_its_fields() -> None:
    types = by_type(catalog.build())
    assert len(types) > 400
    on = types["VmPoweredOnEvent"]
    assert on.kind == "event" and on.vmomi_class == "VmPoweredOnEvent" and on.extends == "VmEvent"
    fields = {f.name: f for f in on.fields}
    assert list(fields)[:4] == ["Key", "ChainId", "CreatedTime", "UserName"]  # govmomi's order
    assert {"Vm", "Host", "Datacenter", "ComputeResource", "Template"} <= set(fields)
    assert fields["Vm"].type == "VmEventArgument" and fields["Vm"].optional
    assert fields["Template"].type == "boolean" and not fields["Template"].optional
    assert fields["CreatedTime"].type == "dateTime" and fields["Key"].type == "int"
    assert fields["Ds"].since == "4.0" and fields["Tgw"].since == "9.1.0.0"
    assert [f.name for f in on.own_fields()] == ["Template"]
    assert on.simulated and on.sources == ("pyvmomi", "simulator")
    migrated = {f.name: f.type for f in types["VmMigratedEvent"].fields}
    assert migrated["SourceHost"] == "HostEventArgument"
    assert {f.name: f.type for f in types["ExtendedEvent"].fields}["ManagedObject"] == (
        "ManagedObjectReference"
    )
    assert {f.name: f.type for f in types["EventEx"].fields}["Arguments"] == "KeyAnyValue[]"
    assert types["EventEx"].kind == "eventex" and types["ExtendedEvent"].kind == "extendedevent"
    assert not types["HostProfileAppliedEvent"].simulated


def test_the_simulators_eventex_types_are_listed_offline() -> None:
    types = by_type(catalog.build())
    for subject in VCenterSimulator.event_classes():
        assert types[subject].simulated
    attach = types["com.vmware.cis.tagging.attach"]
    assert attach.kind == "eventex" and attach.vmomi_class == "EventEx"
    assert "EventTypeId" in [f.name for f in attach.fields]
    assert types["com.vmware.vcIntegrity.ScanStart"].kind == "extendedevent"


def test_search_matches_every_word_in_type_description_or_category() -> None:
    types = catalog.build(descriptions={"vcenter:vc": catalog.describe_event_info(EVENT_INFO)})
    found = catalog.search(types, "vm powered")
    assert {"DrsVmPoweredOnEvent", "VmPoweredOffEvent", "VmPoweredOnEvent"} <= {
        t.type for t in found
    }
    for t in found:  # veba's descriptions count too ("A powered-on virtual machine ...")
        text = f"{t.type} {t.description}".casefold()
        assert "vm" in text and "powered" in text
    assert [t.type for t in catalog.search(types, "POWEREDON")] == [
        "DrsVmPoweredOnEvent",
        "VmPoweredOnEvent",
    ]
    # Descriptions too (a vCenter's), and categories.
    assert [t.type for t in catalog.search(types, "library created")] == [
        "com.vmware.cl.CreateLibraryEvent"
    ]
    assert "esx.problem.net.connectivity.lost" in [t.type for t in catalog.search(types, "error")]
    assert catalog.search(types, "no such thing at all") == []
    assert len(catalog.search(types, "")) == len(types) == len(catalog.search(types, None))


# -- vCenter's descriptions and the log's counts ------------------------------------------


def test_event_info_gives_eventex_and_extendedevent_ids() -> None:
    described = {d["type"]: d for d in catalog.describe_event_info(EVENT_INFO)}
    assert set(described) == {
        "VmPoweredOnEvent",
        "com.vmware.cl.CreateLibraryEvent",
        "esx.problem.net.connectivity.lost",
        "com.vmware.license.HostLicenseExpiredEvent",
        "FutureEvent",
    }  # the entry without an id is left out
    library = described["com.vmware.cl.CreateLibraryEvent"]
    assert library["kind"] == "eventex" and library["description"] == "Created Library"
    assert library["long_description"].startswith("<EventLongDescription")
    assert described["com.vmware.license.HostLicenseExpiredEvent"]["kind"] == "extendedevent"
    assert described["VmPoweredOnEvent"]["kind"] == "event"


def test_build_merges_descriptions_and_seen_counts() -> None:
    seen = {
        "VmPoweredOnEvent": (7, EVENT_TYPE_PREFIX + "event"),
        "com.vmware.cl.CreateLibraryEvent": (2, EVENT_TYPE_PREFIX + "eventex"),
        "com.example.build.finished": (3, "com.example.build"),  # from the webhook
        "": (5, "com.example.nosubject"),
    }
    described = catalog.describe_event_info(EVENT_INFO)
    types = by_type(catalog.build({"vcenter:a": described, "vcenter:b": described[:1]}, seen))
    on = types["VmPoweredOnEvent"]
    assert on.description == "VM powered on" and on.category == "info" and on.seen == 7
    assert on.sources == ("pyvmomi", "simulator", "vcenter:a", "vcenter:b", "log")
    library = types["com.vmware.cl.CreateLibraryEvent"]
    assert (library.kind, library.vmomi_class, library.seen) == ("eventex", "EventEx", 2)
    assert library.fields == types["EventEx"].fields
    assert library.sources == ("vcenter:a", "log")
    assert types["esx.problem.net.connectivity.lost"].seen == 0
    expired = types["com.vmware.license.HostLicenseExpiredEvent"]
    assert expired.vmomi_class == "ExtendedEvent" and expired.category == "warning"
    future = types["FutureEvent"]  # a class newer than pyVmomi: no fields known
    assert future.kind == "event" and future.vmomi_class is None and future.fields == ()
    webhook = types["com.example.build.finished"]
    assert (webhook.kind, webhook.seen, webhook.sources) == ("com.example.build", 3, ("log",))
    assert "" not in types
    assert list(types) == sorted(types, key=lambda t: (t.casefold(), t))


def test_get_is_exact_then_case_insensitive_and_suggests() -> None:
    merged = catalog.Catalog(catalog.build())
    assert merged.get("VmPoweredOnEvent").type == "VmPoweredOnEvent"
    assert merged.get("vmpoweredonevent").type == "VmPoweredOnEvent"
    with pytest.raises(catalog.UnknownEventType) as missing:
        merged.get("VmPoweredOn")
    assert "VmPoweredOnEvent" in missing.value.suggestions
    assert "did you mean" in str(missing.value)


# -- samples ------------------------------------------------------------------------------


def test_a_simulated_type_gets_the_simulators_sample() -> None:
    merged = catalog.Catalog(catalog.build())
    event, origin = catalog.sample(merged.get("VmPoweredOnEvent"), **{"data.Vm.Name": "web-07"})
    assert origin == "simulator"
    assert event.subject == "VmPoweredOnEvent" and event.data["Vm"]["Name"] == "web-07"
    assert event.data == VCenterSimulator().sample("VmPoweredOnEvent", **{"Vm.Name": "web-07"}).data


def test_every_class_has_a_generic_sample_in_vebas_shape() -> None:
    """Data keys are the class's fields a vCenter of VEBA's default version sends,
    in govmomi's order (no Tgw or AuditId, which are 9.1's)."""
    for entry in catalog.pyvmomi_types():
        event = _generic(entry)
        assert event.subject == entry.type
        assert event.type == EVENT_TYPE_PREFIX + entry.kind
        expected = [f.name for f in entry.fields if f.since not in ("9.1.0.0",)]
        assert list(event.data) == expected, entry.type
        json.dumps(event.to_dict())


def test_a_generic_sample_fills_what_the_event_is_about() -> None:
    entry = catalog.Catalog(catalog.build()).get("VmFaultToleranceStateChangedEvent")
    event, origin = catalog.sample(entry, **{"data.Vm.Name": "db-01", "subject": "x"})
    assert origin == "generic"
    data = event.data
    assert data["Vm"]["Name"] == "db-01" and data["Vm"]["Vm"]["Type"] == "VirtualMachine"
    assert data["Host"]["Host"]["Type"] == "HostSystem" and data["Datacenter"]["Name"]
    assert data["OldState"] == "notConfigured"  # an enum: its first value
    assert data["Ds"] is None and data["ChangeTag"] == "" and data["Template"] is False
    assert event.subject == "x"
    # A VM migration has a source host other than the host.
    relocated, _ = catalog.sample(catalog.Catalog(catalog.build()).get("VmRelocatedEvent"))
    assert relocated.data["SourceHost"]["Host"] != relocated.data["Host"]["Host"]


def test_generic_eventex_and_extendedevent_samples_carry_their_id() -> None:
    types = by_type(catalog.build({"vc": catalog.describe_event_info(EVENT_INFO)}))
    event, origin = catalog.sample(types["esx.problem.net.connectivity.lost"])
    assert origin == "generic"
    assert event.type == EVENT_TYPE_PREFIX + "eventex"
    assert event.subject == event.data["EventTypeId"] == "esx.problem.net.connectivity.lost"
    assert event.data["Severity"] == "error"
    assert event.data["FullFormattedMessage"] == "Lost Network Connectivity"
    expired, _ = catalog.sample(types["com.vmware.license.HostLicenseExpiredEvent"])
    assert expired.type == EVENT_TYPE_PREFIX + "extendedevent"
    assert expired.data["EventTypeId"] == "com.vmware.license.HostLicenseExpiredEvent"
    assert expired.data["ManagedObject"]["Type"] == "HostSystem"
    future, _ = catalog.sample(types["FutureEvent"])
    assert future.subject == "FutureEvent" and "Key" in future.data


# -- seen counts --------------------------------------------------------------------------


def _events(subjects: list[str], start: int) -> list[Event]:
    return [
        vsphere_event(
            {"Key": start + i, "CreatedTime": "2024-01-01T00:00:00Z"},
            event_class=subject,
            source="https://vc/sdk",
            instance_uuid="u",
        )
        for i, subject in enumerate(subjects)
    ]


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SQLiteLog]:
    log = SQLiteLog(tmp_path / "events.db")
    await log.open()
    yield log
    await log.close()


async def test_seen_counts_are_counted_once_then_incrementally(log: SQLiteLog) -> None:
    counter = catalog.SeenCounter()
    assert await counter.counts(log) == {}
    await log.append(_events(["A", "B", "A"], 1), route=lambda e: [])
    assert await counter.counts(log) == {
        "A": (2, EVENT_TYPE_PREFIX + "event"),
        "B": (1, EVENT_TYPE_PREFIX + "event"),
    }
    await log.append(_events(["A", "C"], 10), route=lambda e: [])
    await log.append(_events(["A"], 10), route=lambda e: [])  # a duplicate: not counted
    counts = await counter.counts(log)
    assert {s: n for s, (n, _) in counts.items()} == {"A": 3, "B": 1, "C": 1}
    assert counter._seq == 5  # the next call reads only what comes after
    # Concurrent callers share the work and agree.
    results = await asyncio.gather(*(counter.counts(log) for _ in range(5)))
    assert all(r == counts for r in results)


# -- the vCenter provider's descriptions -----------------------------------------------------


class FakeSession:
    opened = 0

    def connect(self) -> None:
        FakeSession.opened += 1

    def close(self) -> None:
        pass

    def event_descriptions(self) -> list[dict[str, Any]]:
        return EVENT_INFO


async def test_the_provider_reads_descriptions_once_per_connection() -> None:
    FakeSession.opened = 0
    endpoint = VCenterEndpoint("https://vc.example.com/sdk", "u", lambda: "p")
    provider = VCenterProvider(endpoint, session_factory=FakeSession)  # type: ignore[arg-type]
    results = await asyncio.gather(*(provider.event_types() for _ in range(3)))
    assert all(r == EVENT_INFO for r in results)
    assert FakeSession.opened == 1
    await provider.event_types()
    assert FakeSession.opened == 1


async def test_the_provider_reads_the_simulators_descriptions(
    vcsim: Callable[..., VCSim],
) -> None:
    sim = vcsim()
    provider = VCenterProvider(VCenterEndpoint(sim.url, USER, lambda: PASSWORD))
    info = await provider.event_types()
    keys = {item["key"] for item in info}
    assert {"VmPoweredOnEvent", "VmPoweredOffEvent", "UserLoginSessionEvent"} <= keys
    described = {d["type"]: d for d in catalog.describe_event_info(info)}
    assert described["VmPoweredOnEvent"]["description"] == "VM powered on"


# -- the API and the CLI -----------------------------------------------------------------------


class DescribingProvider:
    """A provider that only describes event types (or fails to)."""

    type = "vcenter"

    def __init__(self, name: str, info: list[dict[str, Any]] | Exception) -> None:
        self.name = name
        self.info = info

    async def run(self, sink: Any) -> None:
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "connected": True, "last_key": None,
                "events": 0, "last_error": None}  # fmt: skip

    async def event_types(self) -> list[dict[str, Any]]:
        if isinstance(self.info, Exception):
            raise self.info
        return self.info


class Served(ServedAppliance):
    """The appliance with two vCenter providers that describe their event types."""

    def __init__(self, data_dir: Path) -> None:
        providers = [
            DescribingProvider("vcenter:a", EVENT_INFO),
            DescribingProvider("vcenter:b", RuntimeError("cannot log in")),
        ]
        super().__init__(data_dir, providers)  # type: ignore[arg-type]

    def post(self, events: list[Event]) -> None:
        body = json.dumps([e.to_dict() for e in events])
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        with self.http() as http:  # the webhook takes the API token
            http.post("/webhook", content=body, headers=headers).raise_for_status()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path / "data").start()
    yield served
    served.stop()


def test_api_lists_searches_and_shows(served: Served) -> None:
    served.post(_events(["VmPoweredOnEvent"] * 3 + ["com.vmware.cl.CreateLibraryEvent"], 1))
    webhook = Event(
        {"specversion": "1.0", "id": "w1", "source": "ci", "type": "com.example.build",
         "subject": "build.finished"},
        {"ok": True},
    )  # fmt: skip
    served.post([webhook])
    with served.http() as http:
        listing = http.get("/api/v1/catalog").json()
        assert listing["offline"] is False and listing["pyvmomi"]
        assert listing["vcenters"] == [
            {"name": "vcenter:a", "types": 5, "error": None},
            {"name": "vcenter:b", "types": 0, "error": "RuntimeError: cannot log in"},
        ]
        types = {t["type"]: t for t in listing["types"]}
        assert listing["count"] == len(types) > 400
        on = types["VmPoweredOnEvent"]
        assert (on["seen"], on["description"]) == (3, "VM powered on")
        assert "Template" in [f["name"] for f in on["fields"]]
        assert types["com.vmware.cl.CreateLibraryEvent"]["seen"] == 1
        assert types["build.finished"]["kind"] == "com.example.build"

        found = http.get("/api/v1/catalog", params={"search": "library", "fields": "false"})
        assert [t["type"] for t in found.json()["types"]] == ["com.vmware.cl.CreateLibraryEvent"]
        assert "fields" not in found.json()["types"][0]

        shown = http.get(
            "/api/v1/catalog/VmPoweredOnEvent", params={"set": ["data.Vm.Name=web-09"]}
        ).json()
        assert shown["sample_origin"] == "simulator" and shown["seen"] == 3
        assert shown["sample"]["data"]["Vm"]["Name"] == "web-09"
        library = http.get("/api/v1/catalog/com.vmware.cl.CreateLibraryEvent").json()
        assert library["sample_origin"] == "generic"
        assert library["sample"]["data"]["EventTypeId"] == "com.vmware.cl.CreateLibraryEvent"
        build = http.get("/api/v1/catalog/build.finished").json()
        assert build["sample_origin"] == "log" and build["sample"]["data"] == {"ok": True}
        missing = http.get("/api/v1/catalog/VmPoweredOn")
        assert missing.status_code == 404 and "VmPoweredOnEvent" in missing.json()["error"]
        bad = http.get("/api/v1/catalog/VmPoweredOnEvent", params={"set": ["novalue"]})
        assert bad.status_code == 422
        assert httpx.get(f"{served.url}/api/v1/catalog").status_code == 401


def _run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_lists_offline_and_says_so(tmp_path: Path) -> None:
    env = {"VEBA_URL": f"http://127.0.0.1:{free_port()}", "VEBA_DATA_DIR": str(tmp_path)}
    result = _run("catalog", "poweredon", env=env)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()  # not a terminal: a line per type, tab-separated
    assert [line.split("\t")[0] for line in lines] == ["DrsVmPoweredOnEvent", "VmPoweredOnEvent"]
    # veba's own description of it, without a vCenter; then its fields.
    assert lines[1].split("\t")[1:3] == ["event", "A virtual machine was powered on"]
    assert "Template: boolean" in lines[1]
    assert "offline (no appliance at" in result.stderr
    assert "pyVmomi" in result.stderr

    result = _run("catalog", "-o", "json", "--offline", "VmPoweredOnEvent")
    types = json.loads(result.stdout)
    on = next(t for t in types if t["type"] == "VmPoweredOnEvent")
    assert {"Vm", "Host", "Datacenter", "Template"} <= {f["name"] for f in on["fields"]}
    assert "offline (--offline)" in result.stderr


def test_cli_show_prints_a_sample_offline(tmp_path: Path) -> None:
    env = {"VEBA_URL": f"http://127.0.0.1:{free_port()}", "VEBA_DATA_DIR": str(tmp_path)}
    result = _run("catalog", "show", "VmPoweredOnEvent", "--set", "data.Vm.Name=web-03", env=env)
    assert result.exit_code == 0
    event = json.loads(result.stdout)
    assert event["subject"] == "VmPoweredOnEvent" and event["data"]["Vm"]["Name"] == "web-03"
    assert "made by the built-in simulator" in result.stderr
    generic = json.loads(_run("catalog", "show", "HostProfileAppliedEvent", env=env).stdout)
    assert generic["data"]["Host"]["Host"]["Type"] == "HostSystem"
    dotted = _run("catalog", "show", "com.vmware.cl.CreateLibraryEvent", "-o", "json", env=env)
    assert json.loads(dotted.stdout)["sample"]["data"]["EventTypeId"] == (
        "com.vmware.cl.CreateLibraryEvent"
    )
    assert "not in the offline catalogue" in dotted.stderr
    unknown = _run("catalog", "show", "VmPoweredOn", env=env)
    assert unknown.exit_code == 1 and "did you mean VmPoweredOnEvent" in unknown.stderr
    assert _run("catalog", "show", env=env).exit_code == 1
    assert _run("catalog", "power", "--set", "a=b", env=env).exit_code == 1


def test_cli_asks_the_appliance(served: Served) -> None:
    served.post(_events(["VmPoweredOnEvent"] * 2, 1))
    env = {"VEBA_URL": served.url, "VEBA_DATA_DIR": str(served.data_dir)}
    result = _run("catalog", "library", env=env)
    assert result.exit_code == 0
    assert result.stdout.split("\t")[0] == "com.vmware.cl.CreateLibraryEvent"
    assert "vcenter:a: 5 types described" in result.stderr
    assert "vcenter:b" in result.stderr and "cannot log in" in result.stderr
    assert "offline" not in result.stderr
    types = json.loads(_run("catalog", "-o", "json", "powered", "on", env=env).stdout)
    assert {t["type"]: t["seen"] for t in types}["VmPoweredOnEvent"] == 2
    shown = _run("catalog", "show", "esx.problem.net.connectivity.lost", env=env)
    assert json.loads(shown.stdout)["data"]["Severity"] == "error"
    assert "Lost Network Connectivity [error]" in shown.stderr
    missing = _run("catalog", "show", "VmPoweredOn", env=env)
    assert missing.exit_code == 1 and "did you mean" in missing.stderr

    # `veba new --topic` completes from the appliance's catalogue.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VEBA_URL", served.url)
        patch.setenv("VEBA_DATA_DIR", str(served.data_dir))
        names = [name for name, _ in complete_topic("com.vmware.cl.")]
        assert names == ["com.vmware.cl.CreateLibraryEvent"]


def test_topic_completion_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VEBA_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("VEBA_DATA_DIR", str(tmp_path))
    got = complete_topic("VmPoweredOnEvent,vmpowered")
    assert [name for name, _ in got] == ["VmPoweredOnEvent,VmPoweredOffEvent"]
    assert ("VmPoweredOnEvent", "A virtual machine was powered on") in complete_topic("VmPoweredOn")
    assert complete_topic("NoSuch") == []


def test_the_shape_walk_and_the_catalogue_agree() -> None:
    """The fields listed are the keys `to_govmomi` writes for an event of the class."""
    from pyVmomi import vim

    on = catalog.Catalog(catalog.build()).get("VmPoweredOnEvent")
    assert list(to_govmomi(vim.event.VmPoweredOnEvent())) == [f.name for f in on.fields]


def test_set_paths_must_exist_in_the_type_and_say_the_nearest() -> None:
    merged = catalog.Catalog(catalog.build())
    on, failed = merged.get("VmPoweredOnEvent"), merged.get("VmFailedToPowerOnEvent")
    with pytest.raises(catalog.UnknownPath, match=r"did you mean data\.Vm\.Name\?"):
        catalog.sample(on, **{"data.Vm.Nmae": "x"})
    with pytest.raises(catalog.UnknownPath, match=r"did you mean Vm\.Name\?"):
        catalog.sample(on, **{"Vm.Nmae": "x"})  # the simulator's spelling, without data.
    with pytest.raises(catalog.UnknownPath, match=r"data\.Vm\.Name is text"):
        catalog.sample(on, **{"data.Vm.Name.First": "x"})
    with pytest.raises(catalog.UnknownPath, match=r"has no data\.Reason"):
        catalog.sample(on, **{"data.Reason.Msg": "x"})
    # An optional field the sample leaves unset is still the type's; attributes are fine.
    event, _ = catalog.sample(failed, **{"data.Reason.Msg": "no host", "subject": "Custom"})
    assert event.data["Reason"]["Msg"] == "no host" and event.subject == "Custom"
    # A list is indexed within its length (an EventEx's Arguments).
    tagged = merged.get("com.vmware.cis.tagging.attach")
    event, _ = catalog.sample(tagged, **{"data.Arguments.0.Value": "prod"})
    assert event.data["Arguments"][0]["Value"] == "prod"
    with pytest.raises(catalog.UnknownPath, match=r"is a list of"):
        catalog.sample(tagged, **{"data.Arguments.9.Value": "prod"})
    # --add: a field the type does not have, on purpose.
    event, _ = catalog.sample(on, added={"data.Vm.Nmae": "x"})
    assert event.data["Vm"]["Nmae"] == "x"


def test_common_types_are_described_without_a_vcenter() -> None:
    types = by_type(catalog.build())
    assert types["VmPoweredOnEvent"].description == "A virtual machine was powered on"
    assert types["HostConnectionLostEvent"].category == "error"
    # VEBA's examples' EventEx ids, with the EventEx fields.
    sso = types["com.vmware.sso.LoginFailure"]
    assert (sso.kind, sso.vmomi_class, sso.sources) == ("eventex", "EventEx", ("veba",))
    # A connected vCenter's own words come first.
    info = [{"key": "VmPoweredOnEvent", "category": "info", "description": "VM powered on"}]
    described = catalog.build({"vcenter:vc": catalog.describe_event_info(info)})
    assert by_type(described)["VmPoweredOnEvent"].description == "VM powered on"


def test_generic_samples_are_plausible() -> None:
    merged = catalog.Catalog(catalog.build())
    _, origin = catalog.sample(merged.get("UserLoginSessionEvent"))
    assert origin == "simulator"  # the simulator's own, where it makes the type
    renamed, origin = catalog.sample(merged.get("DatastoreRenamedEvent"))
    assert origin == "generic"
    assert "<" not in json.dumps(renamed.data)  # no placeholders for fields it knows
    assert (renamed.data["OldName"], renamed.data["NewName"]) == ("web-01-old", "web-01")
    assert renamed.data["FullFormattedMessage"].startswith("A datastore was renamed: vsan")


# -- topics checked against the catalogue ------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "warnings"),
    [
        # Every naming a topic may use, of known types: no warning.
        ("VmPoweredOnEvent, VmPoweredOffEvent", []),
        ("*", []),
        ("vm.powered.on,drs.vm.powered.on", []),  # VEBA's legacy dotted topics
        ("com.vmware.vsphere.VmPoweredOnEvent.v0", []),  # VEBA v0.8's type names
        ("com.vmware.cis.tagging.attach", []),  # an EventEx id the catalogue knows
        ("com.vmware.vc.HA.ClusterFailoverActionCompletedEvent", []),  # described.tsv's
        ("com.vmware.vsphere.com.vmware.cis.tagging.attach.v0", []),
        # Typos: the nearest known type, in the naming used.
        ("VmPowerdOnEvent", ["'VmPowerdOnEvent' is not a known event type; did you mean 'VmPoweredOnEvent'?"]),
        ("vmpoweredonevent", ["'vmpoweredonevent' is not a known event type; did you mean 'VmPoweredOnEvent'?"]),
        ("vm.powerd.on", ["'vm.powerd.on' is not a known event type; did you mean 'VmPoweredOnEvent'?"]),
        (
            "com.vmware.vsphere.VmPowerdOnEvent.v0",
            ["'com.vmware.vsphere.VmPowerdOnEvent.v0' is not a known event type;"
             " did you mean 'com.vmware.vsphere.VmPoweredOnEvent.v0'?"],
        ),
        # No near one: an EventEx id of the user's vCenter, maybe.
        (
            "com.vmware.vc.vsan.ChecksumNotOkEvent",
            ["'com.vmware.vc.vsan.ChecksumNotOkEvent' is not a known event type"
             " (fine if it is an EventEx id your vCenter sends)"],
        ),
        ("Nonsense", ["'Nonsense' is not a known event type: the function will get no event for it"]),
    ],
)  # fmt: skip
def test_unknown_topics_are_told_with_the_type_meant(topic: str, warnings: list[str]) -> None:
    known = {t.type for t in catalog.build()}
    assert catalog.unknown_topics(topic, known) == warnings
