"""Operations on the rest of vCenter: hosts, alarms, sessions, tags, health, extensions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from veba.providers.simulator._inventory import (
    CLIENTS,
    RESOURCES,
    TAGS,
    AlarmDef,
    AlarmStatus,
    Client,
    Datastore,
    Host,
    Session,
    Vm,
    World,
    random_uuid,
)
from veba.providers.simulator._operation import (
    QUICK,
    SLOW,
    Ctx,
    Operation,
    Pairs,
    SimulationError,
    const,
    describe_host,
    host_args,
    task,
    vm_args,
)
from veba.providers.simulator._shapes import JSON, common, entity_arg, moref
from veba.providers.simulator._vm_operations import drs_migrate

__all__ = ["EXTENDED_EVENT_TYPES", "VCENTER_OPERATIONS"]


# -- hosts ---------------------------------------------------------------------------


def _host_task(ctx: Ctx, user: str, host: Host, method: str, label: str) -> int:
    return task(
        ctx,
        user,
        name=f"{method[0].upper()}{method[1:]}_Task",
        description_id=f"HostSystem.{method}",
        label=label,
        entity=("HostSystem", host.id, host.name),
        args=host_args(host),
    )


def _host_body(user: str, host: Host, what: str) -> JSON:
    dc = host.cluster.datacenter
    return common(user, f"Host {host.name} in {dc.name} {what}", **host_args(host))


def _enter_maintenance(ctx: Ctx, host: Host) -> None:
    user = ctx.user_name()
    chain = _host_task(ctx, user, host, "enterMaintenanceMode", "Enter maintenance mode")
    body = _host_body(user, host, "has started to enter maintenance mode")
    ctx.emit("EnteringMaintenanceModeEvent", body, chain=chain, delay=QUICK)
    host.maintenance = True
    others = ctx.world.active_hosts(host.cluster)
    for vm in [vm for vm in ctx.world.vms.values() if vm.host is host and vm.power == "poweredOn"]:
        drs_migrate(ctx, (vm, ctx.rng.choice(others)))  # DRS evacuates, one chain each
    body = _host_body(user, host, "has entered maintenance mode")
    ctx.emit("EnteredMaintenanceModeEvent", body, chain=chain, delay=SLOW)


def _exit_maintenance(ctx: Ctx, host: Host) -> None:
    user = ctx.user_name()
    chain = _host_task(ctx, user, host, "exitMaintenanceMode", "Exit maintenance mode")
    host.maintenance = False
    body = _host_body(user, host, "has exited maintenance mode")
    ctx.emit("ExitMaintenanceModeEvent", body, chain=chain, delay=SLOW)


def _maintenance_candidates(world: World) -> list[Host]:
    return [h for h in world.hosts if not h.maintenance and len(world.active_hosts(h.cluster)) > 1]


# -- alarms --------------------------------------------------------------------------

AlarmTarget = tuple[AlarmDef, Vm | Host | Datastore]
_NEXT_STATUS: dict[str, tuple[AlarmStatus, ...]] = {
    "gray": ("green",),
    "green": ("yellow",),
    "yellow": ("green", "red"),
    "red": ("yellow",),
}
_ENTITY_TYPE = {Vm: "VirtualMachine", Host: "HostSystem", Datastore: "Datastore"}


def _alarm_entities(world: World, alarm: AlarmDef) -> Sequence[Vm | Host | Datastore]:
    if alarm.entity_type == "VirtualMachine":
        return list(world.vms.values())
    return world.hosts if alarm.entity_type == "HostSystem" else world.datastores


_ALARM = Pairs[AlarmDef, Vm | Host | Datastore](lambda w: w.alarms, _alarm_entities)


def _alarm_args(entity: Vm | Host | Datastore) -> dict[str, JSON]:
    if isinstance(entity, Vm):
        return vm_args(entity)
    if isinstance(entity, Host):
        return host_args(entity)
    return {"dc": entity.datacenter.arg(), "ds": entity.arg()}


def _alarm(ctx: Ctx, target: AlarmTarget) -> None:
    alarm, entity = target
    world = ctx.world
    old = world.alarm_status.get((alarm.id, entity.id), "green")
    to = ctx.params.get("to")
    if to is not None and (to not in _NEXT_STATUS or to == old):
        raise SimulationError(f"alarm {alarm.name!r} on {entity.name} cannot go {old} -> {to}")
    new = cast(AlarmStatus, to) if to is not None else ctx.rng.choice(_NEXT_STATUS[old])
    world.alarm_status[(alarm.id, entity.id)] = new
    message = f"Alarm '{alarm.name}' on {entity.name} changed from {old.title()} to {new.title()}"
    body = {
        **common("", message, **_alarm_args(entity)),
        "Alarm": entity_arg(alarm.name, "Alarm", "Alarm", alarm.id),
        "Source": entity_arg("Datacenters", "Entity", "Folder", world.root_folder),
        "Entity": entity_arg(entity.name, "Entity", _ENTITY_TYPE[type(entity)], entity.id),
        "From": old,
        "To": new,
    }
    ctx.emit("AlarmStatusChangedEvent", body, chain=None, delay=SLOW)


def _describe_alarm(target: AlarmTarget, subject: str) -> dict[str, str]:
    alarm, entity = target
    return {
        "Alarm.Name": alarm.name,
        "Alarm.Alarm.Value": alarm.id,
        "Entity.Name": entity.name,
        "Entity.Entity.Value": entity.id,
        "Entity.Entity.Type": _ENTITY_TYPE[type(entity)],
    }


# -- sessions ------------------------------------------------------------------------


def _login(ctx: Ctx, client: Client) -> None:
    rng = ctx.rng
    session_id = "52" + random_uuid(rng)[2:]
    message = f"User {client.user}@{client.ip} logged in as {client.agent}"
    body = {
        **common(client.user, message),
        "IpAddress": client.ip,
        "UserAgent": client.agent,
        "Locale": "en",
        "SessionId": session_id,
    }
    data = ctx.emit("UserLoginSessionEvent", body, chain=None, delay=SLOW)
    ctx.world.sessions[session_id] = Session(session_id, client, data["CreatedTime"])


def _logout(ctx: Ctx, session: Session) -> None:
    client = session.client
    calls = ctx.rng.randint(3, 400)
    login = datetime.fromisoformat(session.login_time).strftime("%A, %d %B, %Y %I:%M:%S %p")
    message = (
        f"User {client.user}@{client.ip} logged out (login time: {login}, "
        f"number of API invocations: {calls}, user agent: {client.agent})"
    )
    del ctx.world.sessions[session.id]
    body = {
        **common(client.user, message),
        "IpAddress": client.ip,
        "UserAgent": client.agent,
        "CallCount": calls,
        "SessionId": session.id,
        "LoginTime": session.login_time,
    }
    ctx.emit("UserLogoutSessionEvent", body, chain=None, delay=SLOW)


def _describe_client(client: Client, subject: str) -> dict[str, str]:
    return {"UserName": client.user, "IpAddress": client.ip, "UserAgent": client.agent}


def _describe_session(session: Session, subject: str) -> dict[str, str]:
    return {**_describe_client(session.client, subject), "SessionId": session.id}


# -- EventEx and ExtendedEvent ---------------------------------------------------------


def _event_ex(type_id: str, severity: str, arguments: list[tuple[str, str]]) -> JSON:
    return {
        "EventTypeId": type_id,
        "Severity": severity,
        "Message": "",
        "Arguments": [{"Key": k, "Value": v} for k, v in arguments],
        "ObjectId": "",
        "ObjectType": "",
        "ObjectName": "",
        "Fault": None,
    }


def _tagging(ctx: Ctx, vm: Vm, tag: str, *, attach: bool) -> None:
    user = ctx.user_name()
    verb, prep = ("attached", "to") if attach else ("detached", "from")
    message = f"User {user} {verb} tag {tag} {prep} object {vm.name}"
    action = "attach" if attach else "detach"
    body = {
        **common(user, message),
        **_event_ex(
            f"com.vmware.cis.tagging.{action}",
            "info",
            [("Tag", tag), ("Object", vm.name), ("User", user)],
        ),
    }
    tags = ctx.world.vm_tags.setdefault(vm.id, [])
    if attach:
        tags.append(tag)
    else:
        tags.remove(tag)
    ctx.emit("EventEx", body, chain=None, delay=SLOW)


_TAG_ATTACH = Pairs[Vm, str](
    lambda w: list(w.vms.values()),
    lambda w, vm: [t for t in TAGS if t not in w.vm_tags.get(vm.id, ())],
)
_TAG_DETACH = Pairs[Vm, str](
    lambda w: [vm for vm in w.vms.values() if w.vm_tags.get(vm.id)],
    lambda w, vm: list(w.vm_tags[vm.id]),
)


def _describe_tag(target: tuple[Vm, str], subject: str) -> dict[str, str]:
    vm, tag = target
    return {"Arguments.0.Value": tag, "Arguments.1.Value": vm.name}


_SEVERITY = {"green": "info", "yellow": "warning", "red": "error", "gray": "info"}


def _resource(ctx: Ctx, resource: str) -> None:
    world = ctx.world
    old = world.resource_status[resource]
    new = ctx.rng.choice(_NEXT_STATUS[old])
    world.resource_status[resource] = new
    label = RESOURCES[resource]
    change = f"from {old.title()} to {new.title()} on {world.vcenter_host}"
    message = f"{label} Resource status changed {change}  "  # sic, two spaces
    arguments = [
        ("resourceName", resource),
        ("oldStatus", old),
        ("newStatus", new),
        ("reason", " "),
        ("nodeType", "vcenter"),
        ("_sourcehost_", world.vcenter_host),
    ]
    type_id = "vim.event.ResourceExhaustionStatusChangedEvent"
    body = {**common(world.machine_user, message), **_event_ex(type_id, _SEVERITY[new], arguments)}
    ctx.emit("EventEx", body, chain=None, delay=SLOW)


EXTENDED_EVENT_TYPES = ("com.vmware.vcIntegrity.ScanStart", "com.vmware.vcIntegrity.ScanSuccess")


def _scan(ctx: Ctx, host: Host) -> None:
    chain = None
    start, success = EXTENDED_EVENT_TYPES
    for type_id, message in (
        (start, f"Scanning object {host.name}."),
        (success, f"Successfully scanned {host.name}."),
    ):
        body = {
            **common(ctx.world.extension_user, message),
            "Message": message,
            "EventTypeId": type_id,
            "ManagedObject": moref("HostSystem", host.id),
            "Data": [{"Key": "entityName", "Value": host.name}],
        }
        data = ctx.emit("ExtendedEvent", body, chain=chain, delay=SLOW)
        chain = int(data["Key"])


# -- the registry ----------------------------------------------------------------------

VCENTER_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "enter_maintenance", ("EnteringMaintenanceModeEvent", "EnteredMaintenanceModeEvent"),
        const(1), _maintenance_candidates, _enter_maintenance, describe_host,
    ),
    Operation(
        "exit_maintenance", ("ExitMaintenanceModeEvent",), const(4),
        lambda w: [h for h in w.hosts if h.maintenance], _exit_maintenance, describe_host,
        prepare="enter_maintenance",
    ),
    Operation(
        "alarm", ("AlarmStatusChangedEvent",), const(8), _ALARM.all, _alarm,
        _describe_alarm, params={"To": "to"}, pick=_ALARM.pick,
    ),
    Operation(
        "login", ("UserLoginSessionEvent",),
        lambda w: 6.0 if len(w.sessions) < 4 else 1.0,
        lambda w: list(CLIENTS), _login, _describe_client,
    ),
    Operation(
        "logout", ("UserLogoutSessionEvent",), lambda w: 1.5 * len(w.sessions),
        lambda w: list(w.sessions.values()), _logout, _describe_session, prepare="login",
    ),
    Operation(
        "tag_attach", ("com.vmware.cis.tagging.attach",), const(2),
        _TAG_ATTACH.all, lambda ctx, t: _tagging(ctx, *t, attach=True), _describe_tag,
        pick=_TAG_ATTACH.pick,
    ),
    Operation(
        "tag_detach", ("com.vmware.cis.tagging.detach",), const(2),
        _TAG_DETACH.all, lambda ctx, t: _tagging(ctx, *t, attach=False), _describe_tag,
        prepare="tag_attach", pick=_TAG_DETACH.pick,
    ),
    Operation(
        "resource_exhaustion", ("vim.event.ResourceExhaustionStatusChangedEvent",), const(1),
        lambda w: list(w.resource_status), _resource,
        lambda r, s: {"Arguments.0.Value": r},
    ),
    Operation(
        "update_scan", EXTENDED_EVENT_TYPES,
        const(1), lambda w: list(w.hosts), _scan,
        lambda h, s: {"ManagedObject.Value": h.id, "Data.0.Value": h.name},
    ),
)  # fmt: skip
