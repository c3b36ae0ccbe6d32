"""Where deliveries go: local functions and CloudEvents HTTP sinks."""

from veba.targets.base import Result, Target

__all__ = ["Result", "Target"]
