"""Scaling and concurrency settings, as a deploy reads them: OpenFaaS's labels and
variable, Knative's containerConcurrency, veba's annotations; mistakes by path."""

from __future__ import annotations

from typing import Any

import pytest

from veba.deployments import DeployError, FunctionDefinition


def definition(**fields: Any) -> FunctionDefinition:
    return FunctionDefinition.from_payload({"name": "fn", "lang": "python3-http", **fields}, "h")


def test_openfaas_scale_labels_give_the_bounds_and_scale_zero_the_floor() -> None:
    d = definition(labels={"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "8"})
    assert (d.min_workers, d.most_workers, d.idle) == (2, 8, 30.0)
    d = definition(
        labels={"com.openfaas.scale.zero": "true", "com.openfaas.scale.zero-duration": "5m"}
    )
    assert (d.min_workers, d.most_workers, d.idle) == (0, 1, 300.0)
    d = definition(annotations={"veba.scale.idle": "1.5s", "veba.overlap": "8"})
    assert (d.min_workers, d.most_workers, d.idle, d.overlap) == (1, 1, 1.5, 8)


def test_the_call_limit_is_the_smallest_of_maxinflight_and_max_inflight() -> None:
    assert definition().compile()[1].max_inflight == 16
    assert definition(environment={"max_inflight": "3"}).compile()[1].max_inflight == 3
    both = definition(delivery={"maxInflight": 2}, environment={"max_inflight": "5"})
    assert both.compile()[1].max_inflight == 2
    knative = FunctionDefinition.from_payload(
        {"name": "kn", "lang": "knative", "concurrency": 2, "workers": 3}, "h"
    )
    assert knative.compile()[1].max_inflight == 6  # containerConcurrency per instance


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"labels": {"com.openfaas.scale.max": "many"}}, "functions.fn.labels.com.openfaas.scale.max"),
        ({"labels": {"com.openfaas.scale.min": "4", "com.openfaas.scale.max": "2"}},
         "functions.fn.labels.com.openfaas.scale.max"),
        ({"labels": {"com.openfaas.scale.zero": "sometimes"}}, "functions.fn.labels.com.openfaas.scale.zero"),
        ({"environment": {"max_inflight": "0"}}, "functions.fn.environment.max_inflight"),
        ({"annotations": {"veba.scale.idle": "soon"}}, "functions.fn.annotations.veba.scale.idle"),
        ({"lang": "python3", "annotations": {"veba.overlap": "4"}}, "functions.fn.annotations.veba.overlap"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_refused_naming_its_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(DeployError, match=f"^{path}:"):
        definition(**fields)
