"""Which token the CLI would send to which gateway (the rules of
`veba.cli.credentials`; the e2e tests watch real requests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from veba.cli.credentials import Logins, choose_credential, gateway_key, same_appliance
from veba.settings import ensure_token, record_url


def test_one_spelling_per_gateway() -> None:
    assert gateway_key("HTTP://Veba.Example.com/") == "http://veba.example.com:80"
    assert gateway_key("https://veba.example.com") == "https://veba.example.com:443"
    assert gateway_key("https://[::1]:8443/gw/") == "https://[::1]:8443/gw"


@pytest.mark.parametrize(
    ("gateway", "same"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.0.0.1:8080/", True),
        ("http://localhost:8080", True),
        ("https://127.0.0.1:8080", False),  # another scheme is another server
        ("http://127.0.0.1:8081", False),
        ("http://[::1]:8080", False),  # another socket, maybe another process
        ("http://veba.example.com:8080", False),  # a name can point anywhere
        ("http://127.0.0.1:8080/other", False),
        ("not a url", False),
    ],
)
def test_the_data_dir_token_belongs_to_the_recorded_address(gateway: str, same: bool) -> None:
    assert same_appliance("http://127.0.0.1:8080", gateway) is same


def test_which_token_goes_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEBA_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "data"
    local = ensure_token(data)
    record_url(data, "http://127.0.0.1:8080")

    mine = choose_credential("http://localhost:8080", data, None)
    assert (mine.token, mine.source) == (local, "data dir")
    other = choose_credential("https://evil.example.com", data, None)
    assert (other.token, other.withheld_for) == (None, "http://127.0.0.1:8080")

    Logins().save("https://EVIL.example.com/", "theirs", "admin")
    assert choose_credential("https://evil.example.com:443", data, None).token == "theirs"
    assert choose_credential("http://127.0.0.1:8080", data, None).token == local

    monkeypatch.setenv("VEBA_TOKEN", "from-env")
    assert choose_credential("https://evil.example.com", data, None).token == "from-env"
    assert choose_credential("https://evil.example.com", data, "flag").source == "--token"
    assert Logins().forget("https://evil.example.com") is True
    assert Logins().forget("https://evil.example.com") is False
