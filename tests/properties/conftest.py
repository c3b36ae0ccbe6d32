"""Hypothesis profiles: 1,000 examples per property in CI (`CI` set), 100 locally.

No deadline in either: the machine is shared, and a slow example is not a bug.
`HYPOTHESIS_PROFILE=ci` runs the CI count locally.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    print_blob=True,  # a failure prints the @reproduce_failure line to replay it
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
