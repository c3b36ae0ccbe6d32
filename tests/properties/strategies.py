"""Strategies the property tests share: JSON values, and anything YAML can hold."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Text as people and programs write it, control characters and all.
any_text = st.text(max_size=40)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    # Every integer the webhook keeps exactly (veba.strictjson refuses the rest,
    # which test_strictjson.py and test_bad_requests.py show).
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(any_text, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# What yaml.safe_load can return: JSON values plus non-finite floats and
# non-string keys (YAML allows `1: x`, `null: x`, `true: x`).
yaml_scalars = st.one_of(json_scalars, st.floats(), st.sampled_from(["${HOME}", "${NOPE:-x}"]))
yaml_keys = st.one_of(any_text, st.integers(-5, 5), st.booleans(), st.none())


def yaml_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    return st.recursive(
        yaml_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(yaml_keys, children, max_size=3),
        ),
        max_leaves=max_leaves,
    )


def maybe(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] | None = None) -> Any:
    """Mostly (8 in 10) a valid value, else anything at all, or left out (`MISSING`)."""
    wrong = junk if junk is not None else yaml_values(6)
    return st.integers(0, 9).flatmap(
        lambda n: valid if n < 8 else wrong if n == 8 else st.just(MISSING)
    )


MISSING = object()


def without_missing(value: Any) -> Any:
    """Drop the mapping entries `maybe` left out, all the way down."""
    if isinstance(value, dict):
        return {k: without_missing(v) for k, v in value.items() if v is not MISSING}
    if isinstance(value, list):
        return [without_missing(v) for v in value if v is not MISSING]
    return value
