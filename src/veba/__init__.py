"""veba: an event broker appliance for vSphere."""

__version__ = "0.1.0"
