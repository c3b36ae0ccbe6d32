"""The event catalogue: every vCenter event type a function can subscribe to.

Three sources, merged by type (the CloudEvent `subject`, what a `topic` names):

- pyVmomi's event classes (every subclass of `vim.event.Event`), with their data
  fields as VEBA's events carry them: PascalCase, govmomi's order, typed;
- what a connected vCenter's EventManager describes (`description.eventInfo`):
  its classes' descriptions and the ids of its EventEx and ExtendedEvent types,
  which exist only there (vCenter 8 knows some 1,900 types, pyVmomi ~440 classes);
- the event log: how often this appliance has seen each subject.

`sample` makes one event of a type: the built-in simulator's when it can make
one (realistic and consistent), else a generic one built from the pyVmomi
class's properties in VEBA's shape.

Where each part lives: the entries in `_model`, pyVmomi's classes in `_pyvmomi`,
the merging of the sources in `_merge` (with veba's own descriptions of the
common types, `described.tsv`), samples in `_samples`, which `--set` paths a type
has in `_paths`, the log's counts in `_seen`, topics checked against it in
`_topics`. Import from `veba.catalog`, not from those.
"""

from veba.catalog._merge import Catalog, build, describe_event_info, extensible, search
from veba.catalog._model import BASE_FIELDS, EventType, Field, UnknownEventType
from veba.catalog._model import Source as Source  # offered here, though not in __all__
from veba.catalog._paths import UnknownPath
from veba.catalog._pyvmomi import pyvmomi_types
from veba.catalog._pyvmomi import pyvmomi_version as pyvmomi_version  # likewise
from veba.catalog._samples import sample
from veba.catalog._seen import SeenCounter
from veba.catalog._topics import unknown_topics

__all__ = [
    "BASE_FIELDS",
    "Catalog",
    "EventType",
    "Field",
    "SeenCounter",
    "UnknownEventType",
    "UnknownPath",
    "build",
    "describe_event_info",
    "extensible",
    "pyvmomi_types",
    "sample",
    "search",
    "unknown_topics",
]
