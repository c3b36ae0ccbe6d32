"""`VCenterProvider` in-process against govmomi's simulator: real pyVmomi, a list sink."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401
from veba.events import Event
from veba.providers.vcenter import Checkpoint, StreamOptions, VCenterEndpoint, VCenterProvider

FAST = StreamOptions(max_wait=2, backoff_first=0.05, backoff_max=0.5)


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.checkpoints: dict[str, str] = {}

    async def publish(
        self, events: Sequence[Event], *, checkpoint: tuple[str, str] | None = None
    ) -> None:
        self.events += events
        if checkpoint:
            self.checkpoints[checkpoint[0]] = checkpoint[1]

    async def checkpoint(self, provider_name: str) -> str | None:
        return self.checkpoints.get(provider_name)

    def power(self) -> list[Event]:
        return [e for e in self.events if e.subject in ("VmPoweredOnEvent", "VmPoweredOffEvent")]


async def until(check: Callable[[], object], timeout: float = 20.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def provider(url: str, **endpoint: object) -> VCenterProvider:
    return VCenterProvider(
        VCenterEndpoint(url, USER, lambda: PASSWORD, **endpoint),  # type: ignore[arg-type]
        options=FAST,
    )


async def test_power_operations_stream_in_order_and_stop_promptly(
    vcsim: Callable[..., VCSim],
) -> None:
    sim = vcsim()
    vc, sink = provider(sim.url), ListSink()
    task = asyncio.create_task(vc.run(sink))
    await until(lambda: vc.status()["state"] == "following", what="following")
    assert Checkpoint.loads(sink.checkpoints[vc.name]).key == vc.status()["last_key"]

    ops = await asyncio.to_thread(sim.power_ops, 6)
    await until(lambda: len(sink.power()) == 6, what="six power events")
    assert [(e.subject, e.data["Vm"]["Vm"]["Value"]) for e in sink.power()] == ops
    keys = [e.data["Key"] for e in sink.events]
    assert keys == sorted(set(keys))
    status = vc.status()
    assert status["name"] == f"vcenter:127.0.0.1:{sim.port}"
    assert status["source"] == sim.url and status["connected"]
    await until(lambda: vc.status()["lag"] == 0, what="the position to catch up")
    assert Checkpoint.loads(sink.checkpoints[vc.name]).key == keys[-1]

    started = time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert time.monotonic() - started < 3
    assert vc.status()["state"] == "stopped"
    # It logged out: only the test's own session is left.
    si = sim.connect()
    agents = [s.userAgent for s in sim.sessions(si)]
    assert not any(a.startswith("veba/") for a in agents), agents


async def test_keys_past_int32_max_wrap_and_stream_on(vcsim: Callable[..., VCSim]) -> None:
    sim = vcsim("-key-start", str(2**31 - 6))
    vc, sink = provider(sim.url), ListSink()
    task = asyncio.create_task(vc.run(sink))
    try:
        await until(lambda: vc.status()["state"] == "following", what="following")
        await asyncio.to_thread(sim.power_ops, 8)
        await until(lambda: len(sink.power()) == 8, what="eight power events")
        keys = [e.data["Key"] for e in sink.events]
        assert max(keys) == 2**31 - 1 and min(keys) < 0  # it wrapped
        assert keys[-1] < 0 and len(set(keys)) == len(keys)
        await until(lambda: vc.status()["lag"] == 0, what="the position to catch up")
        assert vc.status()["key_gaps"] == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_catch_up_after_downtime_reads_the_backlog(vcsim: Callable[..., VCSim]) -> None:
    sim = vcsim()
    sink = ListSink()
    vc = provider(sim.url)
    task = asyncio.create_task(vc.run(sink))
    await until(lambda: vc.status()["state"] == "following", what="following")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    ops = await asyncio.to_thread(sim.power_ops, 100)
    vc = provider(sim.url)
    task = asyncio.create_task(vc.run(sink))
    try:
        await until(lambda: len(sink.power()) == 100, what="the backlog")
        assert [(e.subject, e.data["Vm"]["Vm"]["Value"]) for e in sink.power()] == ops
        assert vc.status()["catch_ups"] == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def tls_sim(vcsim: Callable[..., VCSim], tmp_path: Path) -> tuple[VCSim, Path]:
    ca = tmp_path / "vcsim-ca.pem"
    sim = vcsim("-tls", "-ca-file", str(ca))
    return sim, ca


async def run_until_following(vc: VCenterProvider, timeout: float = 20.0) -> dict[str, object]:
    task = asyncio.create_task(vc.run(ListSink()))
    try:
        await until(
            lambda: vc.status()["state"] == "following" or vc.status().get("last_error"),
            timeout,
            "following or an error",
        )
        return vc.status()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_tls_with_a_custom_root_ca(tls_sim: tuple[VCSim, Path]) -> None:
    sim, ca = tls_sim
    url = f"https://127.0.0.1:{sim.port}/sdk"
    status = await run_until_following(provider(url, ca_files=(str(ca),)))
    assert status["state"] == "following" and status["source"] == url


async def test_tls_refuses_an_unknown_certificate_unless_insecure(
    tls_sim: tuple[VCSim, Path],
) -> None:
    sim, _ = tls_sim
    url = f"https://127.0.0.1:{sim.port}/sdk"
    status = await run_until_following(provider(url))
    assert status["state"] != "following"
    assert "CERTIFICATE_VERIFY_FAILED" in str(status["last_error"]) or "certificate" in str(
        status["last_error"]
    )
    status = await run_until_following(provider(url, insecure=True))
    assert status["state"] == "following"


async def test_a_wrong_password_is_reported_without_the_password(
    vcsim: Callable[..., VCSim],
) -> None:
    sim = vcsim()
    vc = VCenterProvider(VCenterEndpoint(sim.url, USER, lambda: "hunter2-wrong"), options=FAST)
    status = await run_until_following(vc)
    assert status["state"] != "following" and "InvalidLogin" in str(status["last_error"])
    assert "hunter2" not in str(status) and "hunter2" not in repr(vc.endpoint)


def test_an_endpoint_refuses_credentials_in_the_url() -> None:
    with pytest.raises(ValueError, match="credentials"):
        VCenterEndpoint("https://root:pw@vc/sdk", "root", lambda: "pw")
    assert (
        VCenterEndpoint("https://vc.example.com", "u", str).source == "https://vc.example.com/sdk"
    )
    context = VCenterEndpoint("https://vc/sdk", "u", str, insecure=True).ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE


async def test_the_password_can_come_from_a_veba_secret(
    vcsim: Callable[..., VCSim], tmp_path: Path
) -> None:
    from veba.config import VCenterConfig
    from veba.secrets import SecretStore

    sim = vcsim()
    secrets = SecretStore(tmp_path)
    await secrets.put("vc-password", PASSWORD.encode() + b"\n")
    config = VCenterConfig(
        name="lab", address=sim.url, username=USER, password_secret="vc-password"
    )
    vc = VCenterProvider.from_config(config, secrets)
    vc.options = FAST
    status = await run_until_following(vc)
    assert status["state"] == "following" and status["label"] == "lab"
    missing = VCenterProvider.from_config(
        VCenterConfig(name="lab", address=sim.url, username=USER, password_secret="nope"),
        secrets,
    )
    missing.options = FAST
    status = await run_until_following(missing)
    assert "does not exist" in str(status["last_error"])


async def test_a_restarted_vcenter_is_followed_again(vcsim: Callable[..., VCSim]) -> None:
    sim = vcsim()
    vc, sink = provider(sim.url), ListSink()
    task = asyncio.create_task(vc.run(sink))
    try:
        await until(lambda: vc.status()["state"] == "following", what="following")
        first_uuid = vc.status()["instance_uuid"]
        await asyncio.to_thread(sim.stop)
        await until(lambda: vc.status()["state"] != "following", what="the loss to show")
        assert vc.status()["last_error"]

        again = vcsim(port=sim.port)  # a new instance (new UUID, keys from 1) at the address
        await until(
            lambda: (
                vc.status()["state"] == "following" and vc.status()["instance_uuid"] != first_uuid
            ),
            what="following the new instance",
        )
        # Its own history (VMs created and powered on at its start) came first.
        assert {e.source for e in sink.events} == {sim.url}
        before = len(sink.power())
        ops = await asyncio.to_thread(again.power_ops, 2)
        await until(lambda: len(sink.power()) >= before + 2, what="its power events")
        assert [(e.subject, e.data["Vm"]["Vm"]["Value"]) for e in sink.power()[-2:]] == ops
        assert vc.status()["reconnects"] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
