"""Event providers: where events come from, behind the `Provider` protocol."""

from veba.providers.base import EventSink, Provider
from veba.providers.simulator import SimulatorProvider, VCenterSimulator

__all__ = ["EventSink", "Provider", "SimulatorProvider", "VCenterSimulator"]
