"""vm-attributes: keep custom attributes on VMs from vCenter's own events.

* ``VmCreatedEvent``, ``VmClonedEvent``: ``owner`` (the event's user) and
  ``creation-date`` (when the event happened);
* ``VmPoweredOnEvent``, ``DrsVmPoweredOnEvent``: ``last-poweredon``, moved
  forward only, so a late redelivery of an older power-on cannot turn it back.

pyVmomi through ``veba.sdk.vcenter_session()`` (one warm session per worker,
logged in again by itself when vCenter ends it): the custom field is defined
with ``CustomFieldsManager.AddCustomFieldDef`` the first time, then set with
``SetField``. The attribute names come from the environment.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim, vmodl

from veba.sdk import Event, get_logger, vcenter_config, vcenter_session

log = get_logger()

OWNER = os.environ.get("ATTRIBUTE_OWNER", "owner")
CREATED = os.environ.get("ATTRIBUTE_CREATED", "creation-date")
POWERED_ON = os.environ.get("ATTRIBUTE_POWERED_ON", "last-poweredon")

CREATE_EVENTS = frozenset({"VmCreatedEvent", "VmClonedEvent"})
POWER_ON_EVENTS = frozenset({"VmPoweredOnEvent", "DrsVmPoweredOnEvent"})

# The custom fields' keys, per vCenter (they never change once defined).
_field_keys: dict[Any, dict[str, int]] = {}


def handle(event, ctx):
    ev = Event(event)
    subject = ev.subject or ""
    if subject not in CREATE_EVENTS | POWER_ON_EVENTS:
        log.info("not an event this function handles", subject=subject)
        return {"skipped": True, "reason": f"{subject} is not handled"}
    moref = ev.require("data.Vm.Vm.Value")  # MissingField: a 422, straight to the DLQ
    when = timestamp(ev.require("data.CreatedTime"))

    wanted: dict[str, str] = {}
    if subject in CREATE_EVENTS:
        user = ev.get("data.UserName")
        if user:  # "" when vCenter itself did it
            wanted[OWNER] = str(user)
        wanted[CREATED] = when
    else:
        wanted[POWERED_ON] = when

    si = vcenter_session("vcconfig")
    vm = vim.VirtualMachine(moref, si._stub)
    try:
        current = current_values(vm)  # also: does the VM still exist?
    except vmodl.fault.ManagedObjectNotFound:
        # Removed since: nothing to set, and a retry would not change that.
        log.warning("the VM no longer exists", moref=moref, vm=ev.get("data.Vm.Name"))
        return {"skipped": True, "reason": f"VM {moref} no longer exists"}
    keys = field_keys(si, wanted)

    done: dict[str, str] = {}
    for name, value in wanted.items():
        key = keys[name]
        if name == POWERED_ON and not newer(value, current.get(key)):
            log.info(
                "kept the newer value", attribute=name, value=current.get(key), event_time=value
            )
            continue
        si.content.customFieldsManager.SetField(entity=vm, key=key, value=value)
        done[name] = value
    log.info("attributes set", vm=ev.get("data.Vm.Name"), moref=moref, attributes=done)
    return {"vm": ev.get("data.Vm.Name"), "moref": moref, "set": done}


def timestamp(value: Any) -> str:
    """vCenter's event time (RFC 3339) as ``2024-01-01T09:30:00Z``."""
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text  # not a time as vCenter writes them: kept as is
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def newer(value: str, current: str | None) -> bool:
    if not current:
        return True
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) > datetime.fromisoformat(
            current.replace("Z", "+00:00")
        )
    except ValueError:
        return True  # the current value is not a time (set by hand?): replace it


def current_values(vm: Any) -> dict[int, str]:
    """The VM's custom values by field key (the last one wins)."""
    return {v.key: getattr(v, "value", None) for v in vm.customValue or []}


def field_keys(si: Any, names: dict[str, str]) -> dict[str, int]:
    """The keys of the VM custom fields ``names``, defined if vCenter lacks them."""
    known = _field_keys.setdefault(vcenter_config("vcconfig"), {})
    missing = [name for name in names if name not in known]
    if missing:
        manager = si.content.customFieldsManager
        for name in missing:
            key = _find(manager, name)
            if key is None:
                try:
                    key = manager.AddCustomFieldDef(name=name, moType=vim.VirtualMachine).key
                    log.info("defined a custom attribute", attribute=name)
                except vim.fault.DuplicateName:  # another worker, just now
                    key = _find(manager, name)
            if key is None:
                raise LookupError(f"custom attribute {name!r} could not be defined")
            known[name] = key
    return {name: known[name] for name in names}


def _find(manager: Any, name: str) -> int | None:
    for field in manager.field or []:
        if field.name == name and field.managedObjectType in (None, vim.VirtualMachine):
            return int(field.key)
    return None
