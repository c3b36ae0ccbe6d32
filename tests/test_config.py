"""VEBA's RouterConfig v1alpha1, read strictly: the samples load, mistakes name their field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from veba.config import (
    BasicAuth,
    ConfigError,
    KnativeConfig,
    OpenFaaSConfig,
    OwnBroker,
    load_config,
    names_this_appliance,
    parse_config,
)

DATA = Path(__file__).parent / "data"


def sample(name: str) -> dict:
    return yaml.safe_load((DATA / f"event-router-config-{name}.yaml").read_text())


def write(tmp_path: Path, *documents: dict) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_the_vcenter_openfaas_sample_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sample("vcenter-openfaas")))
    (vc,) = config.vcenters
    assert vc.name == "veba-demo-vc-01"
    assert vc.address == "https://my-vcenter01.domain.local/sdk"
    assert (vc.username, vc.password, vc.insecure_ssl) == (
        "administrator@vsphere.local",
        "ReplaceMe",
        False,
    )
    assert config.processors == (
        OpenFaaSConfig("veba-demo-openfaas", "http://gateway.openfaas:8080", False,
                       BasicAuth("admin", "ReplaceMe")),
    )  # fmt: skip
    assert config.metrics is not None and config.metrics.bind_address == "0.0.0.0:8082"
    assert config.metrics.basic_auth is None
    assert "ReplaceMe" not in repr(config)  # passwords stay out of logs


def test_the_knative_samples_mean_the_appliance_itself_or_their_uri(tmp_path: Path) -> None:
    for name in ("vcenter-knative", "webhook-knative"):
        doc = sample(name)
        # destination.ref names a Broker: veba is the broker, so its own functions.
        config = load_config(write(tmp_path, doc))
        assert config.processors == (OwnBroker("veba-demo-knative", "Broker default/rabbit"),)
        assert "processors" not in config.settings("127.0.0.1:8080")
        doc["eventProcessor"]["knative"]["destination"] = {"uri": "http://127.0.0.1:9000/"}
        config = load_config(write(tmp_path, doc))
        assert config.processors == (
            KnativeConfig("veba-demo-knative", "http://127.0.0.1:9000/", "binary", False, None),
        )
    webhook = load_config(write(tmp_path, doc)).webhook
    assert webhook is not None
    assert (webhook.bind_address, webhook.path) == ("0.0.0.0:8080", "/webhook")
    assert webhook.basic_auth == BasicAuth("webhook-user", "webhook-pass")


def test_a_uri_may_be_written_as_a_url_mapping() -> None:
    doc = sample("vcenter-knative")
    doc["eventProcessor"]["knative"]["destination"] = {
        "uri": {"host": "broker.corp.local", "scheme": "http"}
    }
    (knative,) = parse_config(doc).processors
    assert isinstance(knative, KnativeConfig) and knative.uri == "http://broker.corp.local"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["eventProvider"]["vcenter"].update(insecureSSl=True),
         "eventProvider.vcenter.insecureSSl"),
        (lambda d: d.update(metricProvider={}), "metricProvider"),
        (lambda d: d["eventProcessor"]["openfaas"]["auth"]["basicAuth"].update(user="x"),
         "eventProcessor.openfaas.auth.basicAuth.user"),
        (lambda d: d["metricsProvider"]["default"].update(bindadress="x"),
         "metricsProvider.default.bindadress"),
    ],
)  # fmt: skip
def test_an_unknown_field_is_rejected_with_its_path(edit, field: str, tmp_path: Path) -> None:
    doc = sample("vcenter-openfaas")
    edit(doc)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, doc))
    assert caught.value.path == field
    assert field in str(caught.value) and "unknown field" in str(caught.value)
    assert str(tmp_path / "router.yaml") in str(caught.value)


def test_a_misspelling_gets_a_suggestion() -> None:
    doc = sample("vcenter-openfaas")
    doc["eventProvider"]["vcenter"]["insecureSSl"] = doc["eventProvider"]["vcenter"].pop(
        "insecureSSL"
    )
    with pytest.raises(ConfigError, match="did you mean 'insecureSSL'"):
        parse_config(doc)


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (lambda d: d.update(apiVersion="event-router.vmware.com/v1"), "apiVersion", "v1alpha1"),
        (lambda d: d["eventProvider"]["vcenter"].update(insecureSSL="yes"),
         "eventProvider.vcenter.insecureSSL", "true or false"),
        (lambda d: d["eventProvider"].update(type="vcd"), "eventProvider.type", "vcenter"),
        (lambda d: d["eventProvider"]["vcenter"].pop("auth"), "eventProvider.vcenter.auth",
         "required"),
        (lambda d: d["eventProvider"]["vcenter"].update(address="my-vcenter"),
         "eventProvider.vcenter.address", "URL"),
        (lambda d: d["metricsProvider"]["default"].update(bindAddress="8082"),
         "metricsProvider.default.bindAddress", "HOST:PORT"),
        (lambda d: d["eventProcessor"].update(type="aws_event_bridge"), "eventProcessor.type",
         "not supported"),
    ],
)  # fmt: skip
def test_wrong_values_name_their_field(edit, field: str, reason: str) -> None:
    doc = sample("vcenter-openfaas")
    edit(doc)
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert caught.value.path == field and reason in caught.value.reason


def test_passwords_can_come_from_the_environment(tmp_path: Path) -> None:
    doc = sample("vcenter-openfaas")
    doc["eventProvider"]["vcenter"]["auth"]["basicAuth"]["password"] = "${VC_PASSWORD}"
    (vc,) = load_config(write(tmp_path, doc), env={"VC_PASSWORD": "s3cret"}).vcenters
    assert vc.password == "s3cret"
    with pytest.raises(ConfigError, match=r"VC_PASSWORD\} is not set"):
        load_config(write(tmp_path, doc), env={})


def test_several_documents_configure_several_vcenters(tmp_path: Path) -> None:
    first, second = sample("vcenter-openfaas"), sample("vcenter-openfaas")
    second["eventProvider"]["name"] = "vc-02"
    second["eventProvider"]["vcenter"]["address"] = "https://vc02.domain.local/sdk"
    config = load_config(write(tmp_path, first, second))
    assert [v.name for v in config.vcenters] == ["veba-demo-vc-01", "vc-02"]
    with pytest.raises(ConfigError, match="configured twice"):
        load_config(write(tmp_path, first, first))


def test_root_cas_go_to_the_vcenter() -> None:
    doc = sample("vcenter-openfaas")
    doc["certificates"] = {"rootCAs": ["/etc/ssl/vc-ca.pem"]}
    (vc,) = parse_config(doc).vcenters
    assert vc.root_cas == ("/etc/ssl/vc-ca.pem",)


@pytest.mark.parametrize(
    ("address", "listen", "itself"),
    [
        (None, "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://localhost:8080/", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080", "0.0.0.0:8080", True),
        ("http://127.0.0.1:9090", "127.0.0.1:8080", False),
        ("http://gateway.openfaas:8080", "127.0.0.1:8080", True),  # inside VEBA's appliance
        ("http://gateway.openfaas.svc.cluster.local:8080", "127.0.0.1:8080", True),
        ("http://gateway.corp.local:8080", "0.0.0.0:8080", False),
        ("http://127.0.0.1:8080", "10.9.8.7:8080", False),
    ],
)
def test_which_openfaas_address_is_the_appliance(
    address: str | None, listen: str, itself: bool
) -> None:
    assert names_this_appliance(address, listen) is itself


# -- the configs VEBA's appliances ship ---------------------------------------------


def test_the_v08_appliance_config_means_its_own_functions(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sample("appliance-v0.8")))
    assert config.processors == (OwnBroker("veba-knative", "Broker vmware-functions/default"),)
    settings = config.settings("127.0.0.1:8080")
    assert "processors" not in settings  # nothing is sent anywhere
    assert settings["webhook_listen"] == "0.0.0.0:8080"  # as written
    assert settings["webhook_basic_auth"] == ("hook-user", "Hook-Pass-1")
    ((_, line),) = config.own_processors("127.0.0.1:8080")
    assert line.startswith("eventProcessor veba-knative (knative): destination.ref Broker")
    assert "Hook-Pass-1" not in line


def test_the_v07_openfaas_appliance_config_means_its_own_functions(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sample("appliance-v0.7-openfaas")))
    (vc,) = config.vcenters
    assert (vc.name, vc.insecure_ssl) == ("veba-vc-01", True)
    settings = config.settings("127.0.0.1:8080")
    assert "processors" not in settings
    ((_, line),) = config.own_processors("127.0.0.1:8080")
    assert "http://gateway.openfaas:8080 is this appliance" in line
    assert "OpenFaaS-Pass-1" not in line


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"},
         "a Service cannot be resolved"),
        ({"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "c"},
         "give anything else's URL as destination.uri"),
        ({"apiVersion": "v1", "kind": "Broker", "name": "b"}, "eventing.knative.dev/v1"),
    ],
)  # fmt: skip
def test_a_ref_to_anything_but_a_broker_is_refused(ref: dict, reason: str) -> None:
    doc = sample("appliance-v0.8")
    doc["eventProcessor"]["knative"]["destination"]["ref"] = ref
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert caught.value.path == "eventProcessor.knative.destination.ref"
    assert reason in caught.value.reason


def test_a_ref_and_a_uri_together_are_refused() -> None:
    doc = sample("appliance-v0.8")
    doc["eventProcessor"]["knative"]["destination"]["uri"] = "http://sink.lab.local/"
    with pytest.raises(ConfigError, match=r"destination\.uri or destination\.ref, not both"):
        parse_config(doc)


@pytest.mark.parametrize(
    ("name", "field", "words"),
    [
        ("horizon-knative", "eventProvider.type",
         ["horizon is not supported", "webhook provider", "eventProvider.type: webhook"]),
        ("vcenter-aws", "eventProcessor.type",
         ["aws_event_bridge is not supported", "boto3", "knative", "destination.uri"]),
    ],
)  # fmt: skip
def test_horizon_and_eventbridge_are_refused_with_what_to_use(
    name: str, field: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(sample(name))
    assert caught.value.path == field
    for word in words:
        assert word in caught.value.reason
    assert "\n" not in str(caught.value)
    assert "Pass-1" not in str(caught.value) and "secret-key" not in str(caught.value)


def test_the_installers_name_for_eventbridge_is_refused_too() -> None:
    doc = sample("vcenter-aws")
    doc["eventProcessor"]["type"] = "aws"
    with pytest.raises(ConfigError, match="aws is not supported: veba does not forward"):
        parse_config(doc)


# -- ${VAR}: substituted first, then checked -----------------------------------------


def test_variables_in_boolean_fields_become_booleans() -> None:
    doc = sample("appliance-v0.7-openfaas")
    doc["eventProvider"]["vcenter"]["insecureSSL"] = "${VC_INSECURE}"
    doc["eventProcessor"]["openfaas"]["async"] = "${OF_ASYNC:-false}"
    for text, want in (("true", True), ("False", False), ("TRUE", True)):
        config = parse_config(doc, env={"VC_INSECURE": text})
        assert config.vcenters[0].insecure_ssl is want
        assert config.processors[0] == OpenFaaSConfig(
            "veba-openfaas", "http://gateway.openfaas:8080", False,
            BasicAuth("admin", "OpenFaaS-Pass-1"),
        )  # fmt: skip
    knative = sample("vcenter-knative")
    knative["eventProcessor"]["knative"]["insecureSSL"] = "${SINK_INSECURE}"
    knative["eventProcessor"]["knative"]["destination"] = {"uri": "https://${SINK}/"}
    (sink,) = parse_config(knative, env={"SINK_INSECURE": "true", "SINK": "sink.lab"}).processors
    assert sink == KnativeConfig("veba-demo-knative", "https://sink.lab/", "binary", True, None)
    assert type(sink.uri) is str  # plain text, not the substitution's own type


def test_a_bad_substituted_boolean_names_the_field_and_what_it_got() -> None:
    doc = sample("appliance-v0.7-openfaas")
    doc["eventProvider"]["vcenter"]["insecureSSL"] = "${VC_INSECURE}"
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env={"VC_INSECURE": "yes"})
    assert caught.value.path == "eventProvider.vcenter.insecureSSL"
    assert caught.value.reason == "expected true or false, got 'yes' (from ${VC_INSECURE})"
    with pytest.raises(ConfigError, match=r"\$\{VC_INSECURE\} is not set"):
        parse_config(doc, env={})
    # A literal string stays wrong: only substituted text is read as YAML would.
    doc["eventProvider"]["vcenter"]["insecureSSL"] = "true"
    with pytest.raises(ConfigError, match="expected true or false, got 'true'"):
        parse_config(doc)


def test_a_secret_put_in_a_boolean_by_mistake_is_not_shown() -> None:
    doc = sample("appliance-v0.7-openfaas")
    doc["eventProvider"]["vcenter"]["insecureSSL"] = "${VC_PASSWORD}"
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env={"VC_PASSWORD": "hunter2-very-secret"})
    assert "hunter2" not in str(caught.value)
    assert "the value of ${VC_PASSWORD} (not shown" in caught.value.reason
