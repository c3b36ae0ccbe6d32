"""Hypothesis profiles for the property tests.

- `ci` (when `CI` is set): 1,000 examples per property, derandomized, so a CI
  run tries the same inputs until the code or the test changes and a failure
  reruns the same way;
- `dev` (the default): 100 random examples, a quick check while working;
- `explore` (`HYPOTHESIS_PROFILE=explore`): 10,000 random examples, to hunt.

No deadlines in any: the machine is shared, and a slow example is not a bug.
A failure prints the `@reproduce_failure` line that replays it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=1000, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=100, **_COMMON)
settings.register_profile("explore", max_examples=10_000, **_COMMON)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
