"""`vcenter_session`: the vcconfig secret, and a warm session against govmomi's vcsim."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.vcsim import PASSWORD, USER, VCSim, vcsim_binary_fixture, vcsim_fixture  # noqa: F401
from veba.sdk import VCenterConfig, VCenterConfigError, vcenter_session
from veba.sdk.vcenter import close_sessions, vcenter_config


def test_veba_example_configs() -> None:
    # examples/go/.../vcconfig.toml and examples/python/pre-filter/vcconfig.toml
    go = {"vcenter": {"server": "10.0.0.1", "user": "administrator@vsphere.local",
                      "password": "DontUseThisPassword", "insecure": True}}  # fmt: skip
    py = {"vcenter": {"server": "vcsa.lab", "user": "ro-user@vsphere.local", "pass": "x"}}
    assert VCenterConfig.from_toml(go) == VCenterConfig(
        "10.0.0.1", "administrator@vsphere.local", "DontUseThisPassword", True, 443, "/sdk"
    )
    config = VCenterConfig.from_toml(py)
    assert (config.host, config.password, config.insecure) == ("vcsa.lab", "x", False)
    assert "DontUseThisPassword" not in repr(VCenterConfig.from_toml(go))


def test_server_urls_and_loose_values() -> None:
    def parse(**fields: object) -> VCenterConfig:
        return VCenterConfig.from_toml({"user": "u", "password": "p", **fields})

    url = parse(server="https://vc.lab:8443/sdk", insecure="true")
    assert (url.host, url.port, url.path, url.scheme, url.insecure) == (
        "vc.lab",
        8443,
        "/sdk",
        "https",
        True,
    )
    sim = parse(server="http://127.0.0.1:8989/sdk")
    assert (sim.scheme, sim.port) == ("http", 8989)
    assert parse(server="vc.lab", port=444).port == 444
    assert parse(server="https://vc.lab/").path == "/sdk"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"vcenter": {"user": "u", "password": "p"}}, "[vcenter] server is missing"),
        ({"vcenter": {"server": "vc", "password": "p"}}, "[vcenter] user is missing"),
        ({"vcenter": {"server": "vc", "user": "u"}}, "[vcenter] password is missing"),
        ({"vcenter": {"server": "vc", "user": "u", "password": 5}}, "password must be"),
        (
            {"vcenter": {"server": "vc", "user": "u", "password": "p", "insecure": "yes"}},
            "insecure",
        ),
        ({"vcenter": {"server": "ftp://vc", "user": "u", "password": "p"}}, "https:// or http://"),
        ({"vcenter": {"server": "vc", "user": "u", "password": "p", "port": 0}}, "port"),
        ({"vcenter": "vc"}, "is not a table"),
    ],
)
def test_config_errors_name_the_secret_and_field(doc: dict, words: str) -> None:
    with pytest.raises(VCenterConfigError) as bad:
        VCenterConfig.from_toml(doc, "vcconfig")
    assert words in str(bad.value) and "secret 'vcconfig'" in str(bad.value)


def test_config_from_the_secret(secrets_dir: Callable[..., Path]) -> None:
    secrets_dir(vc='[vcenter]\nserver = "vc.lab"\nuser = "u"\npassword = "p"\n')
    assert vcenter_config("vc").host == "vc.lab"


@pytest.fixture
def sessions() -> Iterator[None]:
    close_sessions()
    yield
    close_sessions()


def test_a_warm_session_that_logs_in_again(
    vcsim: Callable[..., VCSim],
    secrets_dir: Callable[..., Path],
    sessions: None,
) -> None:
    sim = vcsim()
    secrets_dir(
        vcconfig=f'[vcenter]\nserver = "{sim.url}"\nuser = "{USER}"\npassword = "{PASSWORD}"\n'
    )
    si = vcenter_session()
    assert vcenter_session() is si  # warm: one session per worker
    first = si.content.sessionManager.currentSession.key
    assert si.content.about.apiType == "VirtualCenter"
    vm = sim.vms(si)[0]

    # The session ends (vCenter restarted, idle timeout, an admin): the next call
    # gets NotAuthenticated, and the session stub logs in again by itself.
    admin = sim.connect()
    assert first in sim.terminate_sessions(admin, "pyvmomi")
    assert vm.name  # works again
    assert si.content.sessionManager.currentSession.key != first
    assert vcenter_session() is si


def test_bad_credentials_fail_on_first_use(
    vcsim: Callable[..., VCSim],
    secrets_dir: Callable[..., Path],
    sessions: None,
) -> None:
    from pyVmomi import vim

    sim = vcsim()
    secrets_dir(vcconfig=f'server = "{sim.url}"\nuser = "{USER}"\npassword = "wrong"\n')
    with pytest.raises(vim.fault.InvalidLogin):
        vcenter_session()
