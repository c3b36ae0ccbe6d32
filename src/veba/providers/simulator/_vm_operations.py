"""Operations on virtual machines: power, reconfigure, migrate, create, clone, remove."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veba.providers.simulator._inventory import Host, Vm, World, new_vm
from veba.providers.simulator._operation import (
    QUICK,
    SLOW,
    Ctx,
    Operation,
    Pairs,
    SimulationError,
    const,
    describe_host,
    describe_vm,
    host_args,
    host_paths,
    placement,
    task,
    vm_body,
    vm_paths,
    vm_task,
    where,
)
from veba.providers.simulator._shapes import (
    JSON,
    changes_message,
    config_spec,
    entity_arg,
    file_info,
)

__all__ = ["VM_OPERATIONS", "drs_migrate"]


# -- power -------------------------------------------------------------------------


def _vms(world: World, *power: str, active_host: bool = False) -> list[Vm]:
    return [
        vm
        for vm in world.vms.values()
        if vm.power in power and not (active_host and vm.host.maintenance)
    ]


def _step(ctx: Ctx, event_class: str, user: str, vm: Vm, what: str, chain: int, slow: bool) -> None:
    body = vm_body(user, f"{where(vm)} {what}", vm)
    ctx.emit(event_class, body, chain=chain, delay=SLOW if slow else QUICK)


def _power_on(ctx: Ctx, vm: Vm) -> None:
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "PowerOnVM_Task", "powerOn", "Power On virtual machine")
    if vm.power == "suspended":
        _step(ctx, "VmResumingEvent", user, vm, "is resumed", chain, slow=False)
    else:
        _step(ctx, "VmStartingEvent", user, vm, "is starting", chain, slow=False)
    vm.power = "poweredOn"
    _step(ctx, "VmPoweredOnEvent", user, vm, "is powered on", chain, slow=True)


def _drs_power_on(ctx: Ctx, target: tuple[Vm, Host]) -> None:
    vm, host = target
    user = ctx.user_name()
    dc = host.cluster.datacenter
    chain = task(
        ctx,
        user,
        name="PowerOnMultiVM_Task",
        description_id="Datacenter.powerOnVm",
        label="Initialize powering On",
        entity=("Datacenter", dc.id, dc.name),
        args={"dc": dc.arg()},
    )
    vm.host = host  # where DRS placed it
    _step(ctx, "VmStartingEvent", user, vm, "is starting", chain, slow=False)
    vm.power = "poweredOn"
    body = vm_body(user, f"DRS powered on {where(vm)}", vm)
    ctx.emit("DrsVmPoweredOnEvent", body, chain=chain, delay=SLOW)


_DRS_POWER_ON = Pairs[Vm, Host](
    lambda w: _vms(w, "poweredOff"), lambda w, vm: w.active_hosts(vm.host.cluster)
)


def _power_off(ctx: Ctx, vm: Vm) -> None:
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "PowerOffVM_Task", "powerOff", "Power Off virtual machine")
    _step(ctx, "VmStoppingEvent", user, vm, "is stopping", chain, slow=False)
    vm.power = "poweredOff"
    _step(ctx, "VmPoweredOffEvent", user, vm, "is powered off", chain, slow=True)


def _suspend(ctx: Ctx, vm: Vm) -> None:
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "SuspendVM_Task", "suspend", "Suspend virtual machine")
    _step(ctx, "VmSuspendingEvent", user, vm, "is being suspended", chain, slow=False)
    vm.power = "suspended"
    _step(ctx, "VmSuspendedEvent", user, vm, "is suspended", chain, slow=True)


# -- reconfigure ---------------------------------------------------------------------


def _reconfigure(ctx: Ctx, vm: Vm) -> None:
    rng = ctx.rng
    off = vm.power == "poweredOff"
    kinds = ["annotation"]
    if off or vm.cpu_hot_add:
        kinds.append("cpu")
    if off or vm.memory_hot_add:
        kinds.append("memory")
    if off:
        kinds.append("hotadd")
    kind = rng.choice(kinds)
    spec: dict[str, Any] = {}
    if kind == "cpu":
        new_cpu = rng.choice([n for n in (1, 2, 4, 8, 16) if n != vm.num_cpu])
        modified = f"config.hardware.numCPU: {vm.num_cpu} -> {new_cpu}; \n\n"
        spec["NumCPUs"] = vm.num_cpu = new_cpu
    elif kind == "memory":
        sizes = (1024, 2048, 4096, 8192, 16384, 32768)
        new_mb = rng.choice([n for n in sizes if n != vm.memory_mb])
        modified = f"config.hardware.memoryMB: {vm.memory_mb} -> {new_mb}; \n\n"
        spec["MemoryMB"] = vm.memory_mb = new_mb
    elif kind == "hotadd":
        new = not vm.cpu_hot_add
        old_s, new_s = str(not new).lower(), str(new).lower()
        modified = (
            f"config.cpuHotAddEnabled: {old_s} -> {new_s}; \n\n"
            f"config.memoryHotAddEnabled: {old_s} -> {new_s}; \n\n"
        )
        spec["CpuHotAddEnabled"] = spec["MemoryHotAddEnabled"] = new
        vm.cpu_hot_add = vm.memory_hot_add = new
    else:
        notes = ("Owner: platform team", "Ticket CHG-1042", "Do not power off", "Managed by VEBA")
        new_note = rng.choice([n for n in notes if n != vm.annotation])
        modified = f'config.annotation: "{vm.annotation}" -> "{new_note}"; \n\n'
        spec["Annotation"] = vm.annotation = new_note
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "ReconfigVM_Task", "reconfigure", "Reconfigure virtual machine")
    body = vm_body(
        user,
        changes_message(f"Reconfigured {where(vm)}.", modified),
        vm,
        ConfigSpec=config_spec(ChangeVersion=vm.change_version, **spec),
        ConfigChanges={"Modified": modified, "Added": "", "Deleted": ""},
    )
    data = ctx.emit("VmReconfiguredEvent", body, chain=chain, delay=SLOW)
    vm.change_version = data["CreatedTime"]


# -- migrate -------------------------------------------------------------------------


def _destinations(world: World, vm: Vm) -> list[Host]:
    return [h for h in world.active_hosts(vm.host.cluster) if h is not vm.host]


_MIGRATE = Pairs[Vm, Host](lambda w: list(w.vms.values()), _destinations)
_DRS_MIGRATE = Pairs[Vm, Host](lambda w: _vms(w, "poweredOn"), _destinations)
_CLONE = Pairs[Vm, Host](
    lambda w: list(w.vms.values()), lambda w, vm: w.active_hosts(vm.host.cluster)
)


def _being_migrated(ctx: Ctx, user: str, vm: Vm, dest: Host, chain: int | None) -> int:
    src, ds, dc = vm.host, vm.datastore, vm.host.cluster.datacenter
    frm, to = f"{src.name}, {ds.name}", f"{dest.name}, {ds.name}"
    if vm.power == "poweredOn":
        cls, message = (
            "VmBeingHotMigratedEvent",
            f"Migrating {vm.name} from {frm} to {to} in {dc.name}",
        )
    else:
        cls = "VmBeingMigratedEvent"
        message = f"Relocating {vm.name} from {frm} in {dc.name} to {to} in {dc.name}"
    body = vm_body(user, message, vm)
    body.update(Ds=ds.arg(), DestHost=dest.arg(), DestDatacenter=dc.arg(), DestDatastore=ds.arg())
    return int(ctx.emit(cls, body, chain=chain, delay=QUICK)["Key"])


def _migrated_body(user: str, message: str, vm: Vm, src: Host) -> JSON:
    ds, dc = vm.datastore, src.cluster.datacenter
    body = vm_body(user, message, vm)
    body.update(
        Ds=ds.arg(), SourceHost=src.arg(), SourceDatacenter=dc.arg(), SourceDatastore=ds.arg()
    )
    return body


def _migrate(ctx: Ctx, target: tuple[Vm, Host]) -> None:
    vm, dest = target
    src = vm.host
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "RelocateVM_Task", "relocate", "Relocate virtual machine")
    _being_migrated(ctx, user, vm, dest, chain)
    vm.host = dest
    ds = vm.datastore.name
    route = f"from {src.name}, {ds} to {dest.name}, {ds}"
    message = f"Migration of virtual machine {vm.name} {route} completed"
    ctx.emit("VmMigratedEvent", _migrated_body(user, message, vm, src), chain=chain, delay=SLOW)


def drs_migrate(ctx: Ctx, target: tuple[Vm, Host]) -> None:
    vm, dest = target
    src, cluster = vm.host, vm.host.cluster
    chain = _being_migrated(ctx, "", vm, dest, None)
    vm.host = dest
    where_ = f"in cluster {cluster.name} in {cluster.datacenter.name}"
    message = f"DRS migrated {vm.name} from {src.name} to {dest.name} {where_}"
    ctx.emit("DrsVmMigratedEvent", _migrated_body("", message, vm, src), chain=chain, delay=SLOW)


def _describe_migration(target: tuple[Vm, Host], subject: str) -> dict[str, str]:
    vm, dest = target
    if subject.startswith("VmBeing"):
        return {**placement(vm.host), **vm_paths(vm), **host_paths(dest, "DestHost")}
    return {**placement(dest), **vm_paths(vm), **host_paths(vm.host, "SourceHost")}


def _accepts_migration(target: tuple[Vm, Host], subject: str) -> bool:
    on = target[0].power == "poweredOn"
    return {"VmBeingHotMigratedEvent": on, "VmBeingMigratedEvent": not on}.get(subject, True)


# -- create, clone, remove -------------------------------------------------------------


def _new_name(ctx: Ctx) -> str:
    name = ctx.params.get("name")
    if name is None:
        return ctx.world.new_vm_name(ctx.rng)
    if ctx.world.find_vm(name) is not None:
        raise SimulationError(f"a VM named {name!r} already exists")
    return name


def _grow(weight: float) -> Callable[[World], float]:
    return lambda world: weight if len(world.vms) < max(4, 1.5 * world.initial_vms) else 0.0


def _create(ctx: Ctx, host: Host) -> None:
    name = _new_name(ctx)
    user = ctx.user_name()
    dc = host.cluster.datacenter
    chain = task(
        ctx,
        user,
        name="CreateVM_Task",
        description_id="Folder.createVm",
        label="Create virtual machine",
        entity=("Folder", dc.vm_folder, "vm"),
        args=host_args(host),
    )
    vm = new_vm(ctx.rng, f"vm-{ctx.world.moref_base + chain}", name, host, "poweredOff")
    spec = config_spec(
        Name=vm.name,
        Version=vm.hw_version,
        Uuid=vm.uuid,
        GuestId=vm.guest_id,
        Files=file_info(vm.vmx_path),
        NumCPUs=vm.num_cpu,
        NumCoresPerSocket=1,
        MemoryMB=vm.memory_mb,
        Firmware="efi",
    )
    message = f"Creating {vm.name} on {host.name}, {host.cluster.name} in {dc.name}"
    body = vm_body(user, message, vm, ConfigSpec=spec)
    ctx.emit("VmBeingCreatedEvent", body, chain=chain, delay=QUICK)
    ctx.world.vms[vm.id] = vm
    message = f"Created virtual machine {vm.name} on {host.name} in {dc.name}"
    ctx.emit("VmCreatedEvent", vm_body(user, message, vm), chain=chain, delay=SLOW)


def _clone(ctx: Ctx, target: tuple[Vm, Host]) -> None:
    src, dest = target
    name = _new_name(ctx)
    user = ctx.user_name()
    dc = src.host.cluster.datacenter
    chain = vm_task(ctx, user, src, "CloneVM_Task", "clone", "Clone virtual machine")
    message = f"Cloning {src.name} on host {src.host.name} in {dc.name}"
    message += f" to {name} on host {dest.name}"
    folder = entity_arg("vm", "Folder", "Folder", dc.vm_folder)
    body = vm_body(user, message, src, DestFolder=folder, DestName=name, DestHost=dest.arg())
    ctx.emit("VmBeingClonedEvent", body, chain=chain, delay=QUICK)
    vm = new_vm(ctx.rng, f"vm-{ctx.world.moref_base + chain}", name, dest, "poweredOff")
    vm.num_cpu, vm.memory_mb, vm.guest_id = src.num_cpu, src.memory_mb, src.guest_id
    vm.hw_version, vm.annotation = src.hw_version, src.annotation
    ctx.world.vms[vm.id] = vm
    body = vm_body(user, f"Clone of {src.name} completed", vm, SourceVm=src.arg())
    ctx.emit("VmClonedEvent", body, chain=chain, delay=SLOW)


def _describe_clone(target: tuple[Vm, Host], subject: str) -> dict[str, str]:
    src, dest = target
    if subject == "VmClonedEvent":
        return {**placement(dest), **vm_paths(src, "SourceVm")}
    return {**placement(src.host), **vm_paths(src), **host_paths(dest, "DestHost")}


def _remove(ctx: Ctx, vm: Vm) -> None:
    user = ctx.user_name()
    chain = vm_task(ctx, user, vm, "Destroy_Task", "destroy", "Delete virtual machine")
    world = ctx.world
    del world.vms[vm.id]
    world.vm_tags.pop(vm.id, None)
    for key in [k for k in world.alarm_status if k[1] == vm.id]:
        del world.alarm_status[key]
    message = f"Removed {vm.name} on {vm.host.name} from {vm.host.cluster.datacenter.name}"
    ctx.emit("VmRemovedEvent", vm_body(user, message, vm), chain=chain, delay=SLOW)


# -- the registry ----------------------------------------------------------------------

VM_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "power_on", ("TaskEvent", "VmStartingEvent", "VmPoweredOnEvent"), const(10),
        lambda w: _vms(w, "poweredOff", active_host=True), _power_on, describe_vm,
        prepare="power_off",
    ),
    Operation(
        "resume", ("VmResumingEvent", "VmPoweredOnEvent"), const(2),
        lambda w: _vms(w, "suspended", active_host=True), _power_on, describe_vm,
        prepare="suspend",
    ),
    Operation(
        "drs_power_on", ("DrsVmPoweredOnEvent",), const(4), _DRS_POWER_ON.all,
        _drs_power_on, lambda t, s: {**placement(t[1]), **vm_paths(t[0])},
        prepare="power_off", pick=_DRS_POWER_ON.pick,
    ),
    Operation(
        "power_off", ("TaskEvent", "VmStoppingEvent", "VmPoweredOffEvent"), const(9),
        lambda w: _vms(w, "poweredOn"), _power_off, describe_vm, prepare="power_on",
    ),
    Operation(
        "suspend", ("VmSuspendingEvent", "VmSuspendedEvent"), const(2),
        lambda w: _vms(w, "poweredOn"), _suspend, describe_vm, prepare="power_on",
    ),
    Operation(
        "reconfigure", ("TaskEvent", "VmReconfiguredEvent"), const(6),
        lambda w: list(w.vms.values()), _reconfigure, describe_vm,
    ),
    Operation(
        "migrate", ("VmBeingHotMigratedEvent", "VmBeingMigratedEvent", "VmMigratedEvent"),
        const(3), _MIGRATE.all, _migrate, _describe_migration, accepts=_accepts_migration,
        pick=_MIGRATE.pick,
    ),
    Operation(
        "drs_migrate", ("VmBeingHotMigratedEvent", "DrsVmMigratedEvent"), const(4),
        _DRS_MIGRATE.all, drs_migrate, _describe_migration,
        accepts=_accepts_migration, prepare="power_on", pick=_DRS_MIGRATE.pick,
    ),
    Operation(
        "create", ("TaskEvent", "VmBeingCreatedEvent", "VmCreatedEvent"), _grow(2),
        lambda w: [h for h in w.hosts if not h.maintenance], _create, describe_host,
        params={"Vm.Name": "name"},
    ),
    Operation(
        "clone", ("VmBeingClonedEvent", "VmClonedEvent"), _grow(2),
        _CLONE.all, _clone, _describe_clone, params={"Vm.Name": "name", "DestName": "name"},
        pick=_CLONE.pick,
    ),
    Operation(
        "remove", ("TaskEvent", "VmRemovedEvent"),
        lambda w: 3.0 if len(w.vms) > w.initial_vms // 2 else 0.0,
        lambda w: _vms(w, "poweredOff"), _remove, describe_vm, prepare="power_off",
    ),
)  # fmt: skip
