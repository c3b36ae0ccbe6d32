"""Which `--set PATH=VALUE` paths an event of a type has.

A path is a CloudEvent attribute (`subject`), or a dotted path into the data
(`data.Vm.Name`, `Vm.Name`, `Arguments.0.Value`) that the sample has or that
the type's pyVmomi class declares (an optional field the sample leaves unset,
`data.Reason`, is still a field of the type). Anything else is most likely a
typo, and setting it would quietly add a field no vCenter sends: refused with
the nearest real paths. `--add` sets such a path on purpose.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from veba.catalog._model import EventType
from veba.catalog._pyvmomi import event_classes, vmomi

__all__ = ["UnknownPath", "check_paths"]

_MOREF_FIELDS = ("Type", "Value")
_KINDS: dict[type, str] = {str: "text", int: "a number", float: "a number", bool: "true or false"}


class UnknownPath(ValueError):
    """A path the type's events do not have."""


def check_paths(
    entry: EventType, data: Any, paths: Iterable[str], attributes: Iterable[str]
) -> None:
    """Raise `UnknownPath` for the first of `paths` that an event of `entry` (its
    sample's `data`) does not have; `attributes` are the CloudEvent attributes."""
    known_attributes = set(attributes)
    for path in paths:
        if path in known_attributes:
            continue
        prefix = "data" if path.startswith("data.") else ""
        problem = _walk(entry, data, path.removeprefix("data."), prefix)
        if problem:
            raise UnknownPath(f"{path}: {problem}")


def _walk(entry: EventType, data: Any, path: str, prefix: str) -> str | None:
    node: Any = data
    schema: Any = event_classes().get(entry.vmomi_class or "")
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = _join(prefix, *parts[:i])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{where} is a list of {len(node)} item(s): index it 0 to {len(node) - 1}"
            node, schema = node[int(part)], _item(schema)
            continue
        fields = _fields(schema)
        keys = list(node) if isinstance(node, dict) else []
        if isinstance(node, dict) and part in node:
            node, schema = node[part], fields.get(part)
            continue
        if part in fields and (node is None or isinstance(node, dict)):
            node, schema = None, fields[part]  # a field the sample leaves unset
            continue
        if node is not None and not isinstance(node, dict):
            kind = _KINDS.get(type(node), type(node).__name__)
            return f"{where} is {kind}, not an object with fields"
        names = sorted(set(keys) | set(fields))
        what = f"{entry.type} has no {_join(prefix, *parts[: i + 1])}"
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        if not close:
            close = [n for n in names if n.casefold() == part.casefold()]
        if close:
            guess = _join(where, close[0], *parts[i + 1 :])
            return f"{what}; did you mean {guess}? (--add sets a new field on purpose)"
        listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return f"{what}; {where or 'the data'} has {listed} (--add sets a new field on purpose)"
    return None


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _fields(schema: Any) -> dict[str, Any]:
    """The data fields a pyVmomi type has, as VEBA's JSON names them."""
    if schema is None:
        return {}
    support, _ = vmomi()
    if isinstance(schema, type) and issubclass(schema, support.ManagedObject):
        return dict.fromkeys(_MOREF_FIELDS)
    if isinstance(schema, type) and issubclass(schema, support.DataObject):
        cls: Any = schema
        return {
            prop.name[:1].upper() + prop.name[1:]: prop.type
            for prop in cls._GetPropertyList()
            if prop.name not in ("dynamicType", "dynamicProperty")
        }
    return {}


def _item(schema: Any) -> Any:
    return getattr(schema, "Item", None) if isinstance(schema, type) else None
