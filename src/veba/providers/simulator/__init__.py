"""The built-in vCenter simulator: the appliance's default event provider.

`VCenterSimulator` is the pure, seeded generator of a vCenter's event stream;
`SimulatorProvider` paces it into the event log at a given rate.
"""

from veba.providers.simulator._core import DEFAULT_SOURCE, DEFAULT_START, VCenterSimulator
from veba.providers.simulator._operation import SimulationError
from veba.providers.simulator._provider import SimulatorProvider

__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_START",
    "SimulationError",
    "SimulatorProvider",
    "VCenterSimulator",
]
