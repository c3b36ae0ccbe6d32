"""vCenter events from govmomi's simulator, through `veba serve`, to a function.

Everything is real: simulator processes built from Debian's govmomi, pyVmomi
power operations, `veba serve` processes and function workers.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    RECORDER,
    VEBA,
    ApplianceProcess,
    read_jsonl,
    wait_for,
    write_function,
    write_stack,
)
from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401

DATA = Path(__file__).parent.parent / "data"
SAMPLE = json.loads((DATA / "cloudevent-vm-powered-off.json").read_text())
POWER = "VmPoweredOnEvent,VmPoweredOffEvent"


@pytest.fixture
def appliances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ApplianceProcess]]:
    """`veba serve` processes a test starts itself; all stopped when it ends."""
    monkeypatch.setenv("VC_PASSWORD", PASSWORD)
    started: list[ApplianceProcess] = []
    yield started
    for app in started:
        app.stop()


def serve(
    appliances: list[ApplianceProcess], data_dir: Path, *args: str, port: int | None = None
) -> ApplianceProcess:
    app = ApplianceProcess(data_dir, *args)
    if port is not None:
        app.port, app.url = port, f"http://127.0.0.1:{port}"
    appliances.append(app)
    return app.start()


def vcenter_args(*sims: VCSim) -> list[str]:
    args = ["--vcenter-password-env", "VC_PASSWORD"]
    for sim in sims:
        args += ["--vcenter", f"http://{USER}@127.0.0.1:{sim.port}/sdk"]
    return args


def deploy_recorder(app: ApplianceProcess, tmp_path: Path, topic: str = POWER) -> Path:
    out = tmp_path / "received.jsonl"
    write_function(tmp_path / "fn" / "rec", RECORDER)
    stack = write_stack(
        tmp_path / "fn" / "stack.yml",
        {
            "rec": {
                "lang": "python3-http",
                "handler": "./rec",
                "annotations": {"topic": topic},
                "environment": {"OUT": str(out)},
            }
        },
    )
    app.cli("up", "-f", str(stack))
    return out


def vcenter_status(app: ApplianceProcess) -> list[dict[str, Any]]:
    with app.client() as http:
        providers = http.get("/api/v1/status").json()["providers"]
    return [p for p in providers if p["type"] == "vcenter"]


def following(app: ApplianceProcess, count: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        states = vcenter_status(app)
        return len(states) == count and all(p["state"] == "following" for p in states)

    return check


def settled(app: ApplianceProcess, function: str = "rec") -> Callable[[], bool]:
    """Nothing left to deliver (so a duplicate would have arrived by now)."""

    def check() -> bool:
        with app.client() as http:
            return http.get(f"/api/v1/functions/{function}").json()["pending"] == 0

    return check


def power_records(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(out) if r["subject"] in POWER.split(",")]


def test_a_power_off_reaches_a_function_in_vebas_shape(
    vcsim: Callable[..., VCSim], appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    sim = vcsim()
    app = serve(appliances, tmp_path / "data", *vcenter_args(sim))
    out = deploy_recorder(app, tmp_path, "VmPoweredOffEvent")
    wait_for(following(app), 30, "the vCenter provider to follow the simulator")

    si = sim.connect()
    vm = next(vm for vm in sim.vms(si) if vm.runtime.powerState == "poweredOn")
    from tests.vcsim import wait_task

    wait_task(vm.PowerOffVM_Task())

    (got,) = wait_for(lambda: power_records(out), 30, "the VmPoweredOffEvent")
    assert got["type"] == "com.vmware.event.router/event"
    assert got["subject"] == "VmPoweredOffEvent"
    assert got["source"] == sim.url
    data, sample = got["data"], SAMPLE["data"]
    assert list(data) == list(sample)  # VEBA's keys, in VEBA's order
    for key in ("Datacenter", "ComputeResource", "Host", "Vm"):
        assert set(data[key]) == set(sample[key])
        assert set(data[key][key]) == {"Type", "Value"}
    assert data["Vm"]["Vm"] == {"Type": "VirtualMachine", "Value": vm._moId}
    assert data["Vm"]["Name"] == vm.name
    assert data["Datacenter"]["Datacenter"]["Type"] == "Datacenter"
    assert data["Ds"] is None and data["ChangeTag"] == "" and data["Template"] is False
    assert data["CreatedTime"].endswith("Z")

    wait_for(lambda: vcenter_status(app)[0]["lag"] == 0, 30, "the position to catch up")
    (status,) = vcenter_status(app)
    assert status["connected"] and status["last_key"] >= data["Key"]
    assert status["source"] == sim.url


def test_events_of_a_downtime_arrive_once_after_restart(
    vcsim: Callable[..., VCSim], appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    sim = vcsim()
    data_dir = tmp_path / "data"
    app = serve(appliances, data_dir, *vcenter_args(sim))
    out = deploy_recorder(app, tmp_path)
    wait_for(following(app), 30, "the vCenter provider to follow the simulator")
    app.stop()

    ops = sim.power_ops(20)
    app = serve(appliances, data_dir, *vcenter_args(sim), port=app.port)
    got = wait_for(
        lambda: len(power_records(out)) >= 20 and power_records(out), 60, "the 20 events"
    )
    wait_for(settled(app), 30, "every delivery to finish")
    got = power_records(out)
    assert len(got) == 20, Counter(r["data"]["Key"] for r in got).most_common(3)
    assert len({r["id"] for r in got}) == 20
    keys = [r["data"]["Key"] for r in got]
    assert keys == sorted(keys)  # in vCenter's order
    assert [(r["subject"], r["data"]["Vm"]["Vm"]["Value"]) for r in got] == ops
    wait_for(lambda: vcenter_status(app)[0]["lag"] == 0, 30, "the position to catch up")
    assert vcenter_status(app)[0]["catch_ups"] >= 1


def test_a_terminated_session_is_replaced_and_nothing_is_lost(
    vcsim: Callable[..., VCSim], appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    sim = vcsim()
    app = serve(appliances, tmp_path / "data", *vcenter_args(sim))
    out = deploy_recorder(app, tmp_path)
    wait_for(following(app), 30, "the vCenter provider to follow the simulator")

    admin = sim.connect()
    done: list[tuple[str, str]] = []
    worker = threading.Thread(target=lambda: done.extend(sim.power_ops(40)))
    worker.start()
    wait_for(lambda: len(power_records(out)) >= 10, 30, "the stream to be under way")
    killed = sim.terminate_sessions(admin, "veba/")
    worker.join(timeout=60)
    assert killed, "the provider's session was not found"

    wait_for(lambda: len(power_records(out)) >= 40, 60, "all 40 events")
    wait_for(settled(app), 30, "every delivery to finish")
    got = power_records(out)
    assert [(r["subject"], r["data"]["Vm"]["Vm"]["Value"]) for r in got] == done

    def relogged_in() -> bool:
        (status,) = vcenter_status(app)
        return status["reconnects"] >= 1 and status["state"] == "following"

    wait_for(relogged_in, 30, "the provider to log in again")

    # /metrics says the same: connected, where it is, and the drop counted.
    (status,) = vcenter_status(app)
    with app.client() as http:
        families = text_string_to_metric_families(http.get("/metrics").text)
    samples = {
        s.name: s.value
        for family in families
        for s in family.samples
        if s.labels.get("provider") == status["name"]
    }
    assert samples["veba_provider_connected"] == 1
    assert samples["veba_provider_last_key"] >= max(r["data"]["Key"] for r in got) > 0
    assert samples["veba_provider_reconnects_total"] >= 1
    assert samples["veba_provider_events_total"] >= 40
    assert samples["veba_provider_checkpoint_age_seconds"] >= 0


def test_two_vcenters_in_one_appliance(
    vcsim: Callable[..., VCSim], appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    first, second = vcsim(), vcsim()
    app = serve(appliances, tmp_path / "data", *vcenter_args(first, second))
    out = deploy_recorder(app, tmp_path)
    wait_for(following(app, 2), 30, "both vCenter providers to follow")

    threads = [
        threading.Thread(target=sim.power_ops, args=(15,), daemon=True) for sim in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    wait_for(lambda: len(power_records(out)) >= 30, 60, "30 events from two simulators")
    wait_for(settled(app), 30, "every delivery to finish")
    got = power_records(out)
    assert Counter(r["source"] for r in got) == {first.url: 15, second.url: 15}
    assert len({r["id"] for r in got}) == 30
    for sim in (first, second):
        keys = [r["data"]["Key"] for r in got if r["source"] == sim.url]
        assert keys == sorted(keys)
    statuses = {p["source"]: p for p in vcenter_status(app)}
    assert set(statuses) == {first.url, second.url}
    assert statuses[first.url]["instance_uuid"] != statuses[second.url]["instance_uuid"]
    assert all(p["name"].startswith("vcenter:127.0.0.1:") for p in statuses.values())
    # `veba status` shows the same, per vCenter.
    shown = json.loads(app.cli("status").stdout)
    assert {p["source"] for p in shown["providers"] if p["type"] == "vcenter"} == set(statuses)


def test_a_router_config_runs_the_appliance(
    vcsim: Callable[..., VCSim], appliances: list[ApplianceProcess], tmp_path: Path
) -> None:
    """VEBA's vcenter-openfaas sample, addresses changed: the openfaas processor
    names the appliance, so its own functions get the events; /stats answers."""
    from tests.e2e.harness import free_port

    sim = vcsim()
    app = ApplianceProcess(tmp_path / "data")
    config = yaml.safe_load((DATA / "event-router-config-vcenter-openfaas.yaml").read_text())
    config["eventProvider"]["vcenter"]["address"] = sim.url
    config["eventProvider"]["vcenter"]["auth"]["basicAuth"] = {
        "username": USER,
        "password": "${VC_PASSWORD}",
    }
    config["eventProcessor"]["openfaas"]["address"] = app.url
    stats_port = free_port()
    config["metricsProvider"]["default"] = {
        "bindAddress": f"127.0.0.1:{stats_port}",
        "auth": {"type": "basic_auth", "basicAuth": {"username": "admin", "password": "pw"}},
    }  # fmt: skip
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    app.args = ["--config", str(path)]
    appliances.append(app)
    app.start()
    out = deploy_recorder(app, tmp_path)
    wait_for(following(app), 30, "the vCenter provider to follow the simulator")
    assert vcenter_status(app)[0]["label"] == "veba-demo-vc-01"

    sim.power_ops(4)
    wait_for(lambda: len(power_records(out)) >= 4, 30, "four power events")

    import httpx

    stats_url = f"http://127.0.0.1:{stats_port}/stats"
    assert httpx.get(stats_url).status_code == 401
    stats = httpx.get(stats_url, auth=("admin", "pw")).json()
    router = stats["vmware.event.router.stats"]
    assert router["vcenter"]["type"] == "EventProvider"
    assert router["vcenter"]["address"] == sim.url
    assert router["vcenter"]["events_total"] >= 4
    assert set(router["vcenter"]) == {"type", "address", "started", "events_total",
                                      "events_err", "events_per_sec"}  # fmt: skip
    assert router["openfaas"]["type"] == "EventProcessor"
    assert {"system.numberOfSeconds", "system.allLoad", "cmdline"} <= set(stats)


def test_a_misspelled_router_config_field_is_named(tmp_path: Path) -> None:
    config = yaml.safe_load((DATA / "event-router-config-vcenter-openfaas.yaml").read_text())
    config["eventProvider"]["vcenter"]["insecureSSl"] = config["eventProvider"]["vcenter"].pop(
        "insecureSSL"
    )
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [VEBA, "serve", "--data-dir", str(tmp_path / "data"), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "eventProvider.vcenter.insecureSSl" in result.stderr
    assert "did you mean 'insecureSSL'" in result.stderr
