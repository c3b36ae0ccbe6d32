"""VEBA's RouterConfig as a property: any document (or any text) either gives a
config or a `ConfigError` naming the file and the field, never another
exception; and no error shows the value of a secret-looking variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, example, given
from hypothesis import strategies as st

from tests.properties.strategies import maybe, without_missing, yaml_values
from veba.config import API_VERSION, KIND, ConfigError, load_config, parse_config

PLANTED = "pl4nted-s3cret"
ENV = {"VC_PASSWORD": PLANTED, "VC_INSECURE": "true", "VC_HOST": "vc.corp.local", "WEIRD": "]:["}

texts = st.sampled_from(["veba", "${VC_HOST}", "${VC_PASSWORD}", "${UNSET}", "${UNSET:-d}", ""])
addresses = st.sampled_from(["0.0.0.0:8080", "127.0.0.1:8082", "[::]:8080"])
bad_addresses = st.sampled_from(["8080", ":8080", "host:", "${WEIRD}"]) | yaml_values(2)
urls = st.sampled_from(
    ["https://vc.corp.local/sdk", "http://gateway.openfaas:8080", "https://${VC_HOST}/sdk"]
)
bad_urls = st.sampled_from(
    [
        "vc.corp.local",
        "ftp://x",
        "http://[::1",
        "http://[zz]/",
        "https://x:99999/",
        "http://\uff0e/",
    ]
) | yaml_values(2)
booleans = st.booleans() | st.just("${VC_INSECURE}")


def auth(required_type: str = "basic_auth") -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {
            "type": maybe(st.just(required_type), st.sampled_from(["active_directory", ""])),
            "basicAuth": maybe(
                st.fixed_dictionaries(
                    {
                        "username": maybe(st.sampled_from(["admin", "${VC_HOST}"])),
                        "password": maybe(st.just("${VC_PASSWORD}")),
                    }
                )
            ),
        }
    )


providers = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("vcenter"),
            "name": maybe(st.just("vc-01")),
            "vcenter": maybe(
                st.fixed_dictionaries(
                    {"address": maybe(urls, bad_urls), "auth": maybe(auth())},
                    optional={
                        "insecureSSL": maybe(booleans),
                        "checkpoint": maybe(st.booleans()),
                        "checkpointDir": maybe(texts),
                    },
                )
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("webhook"),
            "name": maybe(st.just("hook")),
            "webhook": maybe(
                st.fixed_dictionaries(
                    {"bindAddress": maybe(addresses, bad_addresses)},
                    optional={
                        "path": maybe(st.sampled_from(["/webhook", "/events"]), st.just("x")),
                        "auth": maybe(auth()),
                    },
                )
            ),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["horizon", "kafka"]), "name": texts}),
)
processors = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("openfaas"),
            "name": maybe(st.just("faas")),
            "openfaas": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "address": maybe(urls, bad_urls),
                        "async": maybe(booleans),
                        "auth": maybe(auth()),
                    },
                )
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("knative"),
            "name": maybe(st.just("kn")),
            "knative": maybe(
                st.fixed_dictionaries(
                    {
                        "destination": maybe(
                            st.one_of(
                                st.fixed_dictionaries({"uri": maybe(urls, bad_urls)}),
                                st.fixed_dictionaries(
                                    {
                                        "ref": st.fixed_dictionaries(
                                            {
                                                "apiVersion": maybe(
                                                    st.just("eventing.knative.dev/v1")
                                                ),
                                                "kind": maybe(
                                                    st.just("Broker"), st.just("Service")
                                                ),
                                                "name": maybe(st.just("default")),
                                            },
                                            optional={"namespace": maybe(texts)},
                                        )
                                    }
                                ),
                                st.fixed_dictionaries(
                                    {"uri": st.fixed_dictionaries({"host": texts, "scheme": texts})}
                                ),
                            )
                        )
                    },
                    optional={
                        "encoding": maybe(st.sampled_from(["binary", "structured"]), texts),
                        "insecureSSL": maybe(booleans),
                        "auth": maybe(auth()),
                    },
                )
            ),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["aws_event_bridge", "aws"]), "name": texts}),
)
metrics = st.fixed_dictionaries(
    {
        "type": maybe(st.just("default")),
        "name": maybe(st.just("metrics")),
        "default": maybe(
            st.fixed_dictionaries(
                {"bindAddress": maybe(addresses, bad_addresses)}, optional={"auth": maybe(auth())}
            )
        ),
    }
)
documents = st.fixed_dictionaries(
    {
        "apiVersion": maybe(st.just(API_VERSION), st.just("v1")),
        "kind": maybe(st.just(KIND), st.just("Config")),
    },
    optional={
        "metadata": maybe(st.fixed_dictionaries({"name": texts, "labels": st.just({"a": "b"})})),
        "eventProvider": maybe(providers),
        "eventProcessor": maybe(processors),
        "metricsProvider": maybe(metrics),
        "certificates": maybe(st.fixed_dictionaries({"rootCAs": st.lists(texts, max_size=2)})),
        "extra": yaml_values(3),
    },
)


def parses_or_names_the_field(document: Any) -> None:
    try:
        config = parse_config(document, file="router.yaml", env=ENV)
    except ConfigError as exc:
        assert exc.file == "router.yaml"
        assert exc.reason, exc
        assert PLANTED not in str(exc)
        event("refused")
        return
    event("accepted")
    # What `veba serve` then does with it, on a wildcard and on a loopback address.
    for listen in ("0.0.0.0:8080", "127.0.0.1:9999"):
        config.settings(listen)
        for _, line in config.own_processors(listen):
            assert PLANTED not in line
    assert PLANTED not in repr(config)


@given(documents)
# Found by this property: urlsplit's ValueError ("Invalid IPv6 URL") escaped.
@example(
    {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "eventProvider": {
            "type": "vcenter",
            "name": "vc",
            "vcenter": {
                "address": "http://[::1",
                "auth": {"basicAuth": {"username": "u", "password": "p"}},
            },
        },
    }
)
# Found by this property: a bad URL quoted in the error showed the password
# variable's value it was built from.
@example(
    {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "eventProcessor": {
            "type": "knative",
            "name": "kn",
            "knative": {"destination": {"uri": ":x ${VC_PASSWORD}"}},
        },
    }
)
def test_a_router_config_loads_or_names_the_field_at_fault(document: Any) -> None:
    parses_or_names_the_field(without_missing(document))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


@given(
    st.text(max_size=300)
    | st.lists(documents, max_size=3).map(
        lambda ds: yaml.safe_dump_all([without_missing(d) for d in ds])
    )
)
@example("[" * 5000)
@example("a: &x [*x]")
@example(f"apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata: &m {{labels: *m}}\n")
def test_any_config_file_loads_or_names_the_field_at_fault(folder: Path, text: str) -> None:
    path = folder / "router.yaml"
    path.write_text(text)
    try:
        load_config(path, env=ENV)
    except ConfigError as exc:
        assert exc.file.startswith(str(path)), exc
        assert PLANTED not in str(exc)
