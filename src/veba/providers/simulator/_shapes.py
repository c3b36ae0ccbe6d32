"""vSphere data objects in govmomi's JSON shape, as VEBA's router forwards them.

govmomi marshals its Go structs with encoding/json: PascalCase field names, every
field present, nil pointers and slices as null, zero values written out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]


def rfc3339(value: datetime) -> str:
    """Go's RFC3339Nano in UTC: fraction without trailing zeros, `Z` suffix."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def moref(type_: str, value: str) -> JSON:
    return {"Type": type_, "Value": value}


def entity_arg(name: str, field: str, type_: str, value: str) -> JSON:
    """An EntityEventArgument subclass: `{"Name": ..., <field>: <MoRef>}`."""
    return {"Name": name, field: moref(type_, value)}


def common(
    user: str,
    message: str,
    *,
    dc: JSON | None = None,
    cr: JSON | None = None,
    host: JSON | None = None,
    vm: JSON | None = None,
    ds: JSON | None = None,
    net: JSON | None = None,
    dvs: JSON | None = None,
) -> JSON:
    """The fields every Event has after Key, ChainId and CreatedTime, in govmomi order."""
    return {
        "UserName": user,
        "Datacenter": dc,
        "ComputeResource": cr,
        "Host": host,
        "Vm": vm,
        "Ds": ds,
        "Net": net,
        "Dvs": dvs,
        "FullFormattedMessage": message,
        "ChangeTag": "",
    }


# VirtualMachineConfigSpec as of vSphere 8.0.2, in declaration order.
# s: string (""), i: number (0), n: pointer, slice or optional bool (null).
_CONFIG_SPEC_FIELDS = """
ChangeVersion:s Name:s Version:s CreateDate:n Uuid:s InstanceUuid:s NpivNodeWorldWideName:n
NpivPortWorldWideName:n NpivWorldWideNameType:s NpivDesiredNodeWwns:i NpivDesiredPortWwns:i
NpivTemporaryDisabled:n NpivOnNonRdmDisks:n NpivWorldWideNameOp:s LocationId:s GuestId:s
AlternateGuestName:s Annotation:s Files:n Tools:n Flags:n ConsolePreferences:n PowerOpInfo:n
RebootPowerOff:n NumCPUs:i VcpuConfig:n NumCoresPerSocket:i MemoryMB:i MemoryHotAddEnabled:n
CpuHotAddEnabled:n CpuHotRemoveEnabled:n VirtualICH7MPresent:n VirtualSMCPresent:n
DeviceChange:n CpuAllocation:n MemoryAllocation:n LatencySensitivity:n CpuAffinity:n
MemoryAffinity:n NetworkShaper:n CpuFeatureMask:n ExtraConfig:n SwapPlacement:s BootOptions:n
VAppConfig:n FtInfo:n RepConfig:n VAppConfigRemoved:n VAssertsEnabled:n
ChangeTrackingEnabled:n Firmware:s MaxMksConnections:i GuestAutoLockEnabled:n ManagedBy:n
MemoryReservationLockedToMax:n NestedHVEnabled:n VPMCEnabled:n ScheduledHardwareUpgradeInfo:n
VmProfile:n MessageBusTunnelEnabled:n Crypto:n MigrateEncryption:s SgxInfo:n
FtEncryptionMode:s GuestMonitoringModeInfo:n SevEnabled:n VirtualNuma:n MotherboardLayout:s
PmemFailoverEnabled:n VmxStatsCollectionEnabled:n VmOpNotificationToAppEnabled:n
VmOpNotificationTimeout:i DeviceSwap:n SimultaneousThreads:i Pmem:n DeviceGroups:n
FixedPassthruHotPlugEnabled:n
"""
_ZERO: dict[str, Any] = {"s": "", "i": 0, "n": None}
_CONFIG_SPEC: JSON = {
    name: _ZERO[kind] for name, kind in (item.split(":") for item in _CONFIG_SPEC_FIELDS.split())
}


def config_spec(**fields: Any) -> JSON:
    """A VirtualMachineConfigSpec with only `fields` set, the rest zero as govmomi writes it."""
    unknown = fields.keys() - _CONFIG_SPEC.keys()
    if unknown:
        raise KeyError(f"not VirtualMachineConfigSpec fields: {sorted(unknown)}")
    return {**_CONFIG_SPEC, **fields}


def file_info(vmx_path: str) -> JSON:
    return {
        "VmPathName": vmx_path,
        "SnapshotDirectory": "",
        "SuspendDirectory": "",
        "LogDirectory": "",
        "FtMetadataDirectory": "",
    }


def task_info(
    *,
    key: int,
    name: str,
    description_id: str,
    entity: JSON,
    entity_name: str,
    user: str | None,
    queued: str,
) -> JSON:
    """TaskInfo of a just-queued task, as a TaskEvent carries it.

    `user` None is a system task (TaskReasonSystem, which has no fields).
    """
    task_id = f"task-{key}"
    return {
        "Key": task_id,
        "Task": moref("Task", task_id),
        "Description": None,
        "Name": name,
        "DescriptionId": description_id,
        "Entity": entity,
        "EntityName": entity_name,
        "Locked": None,
        "State": "queued",
        "Cancelled": False,
        "Cancelable": True,
        "Error": None,
        "Result": None,
        "Progress": 0,
        "Reason": {} if user is None else {"UserName": user},
        "QueueTime": queued,
        "StartTime": None,
        "CompleteTime": None,
        "EventChainId": 0,
        "ChangeTag": "",
        "ParentTaskKey": "",
        "RootTaskKey": "",
        "ActivationId": "",
    }


def changes_message(head: str, modified: str = "", added: str = "", deleted: str = "") -> str:
    """The "Modified / Added / Deleted" layout vCenter uses for reconfigure events."""
    return f"{head} \n \nModified:  \n \n{modified} Added:  \n \n{added} Deleted:  \n \n{deleted}"
