"""The vCenter event provider: pyVmomi, WaitForUpdatesEx as the wake-up,
ReadNextEvents to catch up, Key-based resume, one thread per vCenter.

`VCenterProvider` is what the appliance runs; `VCenterEndpoint` says where a
vCenter is and how to log in; `to_govmomi` maps any pyVmomi data object to
the JSON shape VEBA's events carry.
"""

from veba.providers.vcenter._keys import Checkpoint, after, distance
from veba.providers.vcenter._provider import VCenterProvider
from veba.providers.vcenter._session import PyVmomiSession, VCenterEndpoint
from veba.providers.vcenter._shape import event_class, event_kind, rfc3339, to_govmomi
from veba.providers.vcenter._stream import Stream, StreamOptions

__all__ = [
    "Checkpoint",
    "PyVmomiSession",
    "Stream",
    "StreamOptions",
    "VCenterEndpoint",
    "VCenterProvider",
    "after",
    "distance",
    "event_class",
    "event_kind",
    "rfc3339",
    "to_govmomi",
]
