"""How the simulated vCenter does things: one operation, one or more events.

Each `Operation` says which targets it can act on now (so a powered-off VM is
never powered off again), and runs against one of them, changing the `World`
and emitting events the way vCenter does: a user's task starts with a
`TaskEvent` whose Key is the ChainId of the events that follow it. An operation
checks everything that could fail before it emits its first event.

The operations themselves are in `_vm_operations` and `_vcenter_operations`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from veba.providers.simulator._inventory import USERS, Host, Vm, World
from veba.providers.simulator._shapes import JSON, common, moref, task_info


class SimulationError(ValueError):
    """The simulated vCenter cannot do what was asked (no such VM, VM already off, ...)."""


# Seconds between the events of one operation: quick steps and slow ones.
QUICK = (0.005, 0.2)
SLOW = (0.3, 4.0)


class Emit(Protocol):
    def __call__(
        self, event_class: str, body: JSON, *, chain: int | None, delay: tuple[float, float]
    ) -> JSON:
        """Record one event; returns its data, Key and CreatedTime filled in."""
        ...


@dataclass
class Ctx:
    world: World
    rng: random.Random
    emit: Emit
    user: str | None = None  # the UserName asked for, else drawn per operation
    params: dict[str, str] = field(default_factory=dict)

    def user_name(self) -> str:
        return self.user if self.user is not None else self.rng.choice(USERS)


Target = Any


@dataclass(frozen=True)
class Operation:
    name: str
    subjects: tuple[str, ...]  # the subjects a trigger of this operation can ask for
    weight: Callable[[World], float]
    candidates: Callable[[World], list[Target]]
    run: Callable[[Ctx, Target], None]
    # data paths (as they appear in `subject`'s event) that identify a target
    describe: Callable[[Target, str], dict[str, str]]
    params: Mapping[str, str] = field(default_factory=dict)  # data path -> parameter
    accepts: Callable[[Target, str], bool] = lambda target, subject: True
    prepare: str | None = None  # operation that makes a target, for sample()
    # a random target without listing them all (None: there is none), for big inventories
    pick: Callable[[World, random.Random], Target | None] | None = None


A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class Pairs(Generic[A, B]):
    """Targets that are pairs (VM and destination host, alarm and entity)."""

    firsts: Callable[[World], Sequence[A]]
    seconds: Callable[[World, A], Sequence[B]]

    def all(self, world: World) -> list[tuple[A, B]]:
        return [(a, b) for a in self.firsts(world) for b in self.seconds(world, a)]

    def pick(self, world: World, rng: random.Random) -> tuple[A, B] | None:
        firsts = self.firsts(world)
        for _ in range(8 if firsts else 0):
            first = rng.choice(firsts)
            seconds = self.seconds(world, first)
            if seconds:
                return first, rng.choice(seconds)
        pairs = self.all(world)  # few firsts have a second: find them the slow way
        return rng.choice(pairs) if pairs else None


# -- event arguments and descriptions ---------------------------------------------


def host_args(host: Host) -> dict[str, JSON]:
    cluster = host.cluster
    return {"dc": cluster.datacenter.arg(), "cr": cluster.arg(), "host": host.arg()}


def vm_args(vm: Vm, host: Host | None = None) -> dict[str, JSON]:
    return {**host_args(host or vm.host), "vm": vm.arg()}


def vm_body(user: str, message: str, vm: Vm, host: Host | None = None, **extra: Any) -> JSON:
    return {**common(user, message, **vm_args(vm, host)), "Template": False, **extra}


def where(vm: Vm, host: Host | None = None) -> str:
    host = host or vm.host
    return f"{vm.name} on {host.name} in {host.cluster.datacenter.name}"


def placement(host: Host) -> dict[str, str]:
    cluster, dc = host.cluster, host.cluster.datacenter
    return {
        "Datacenter.Name": dc.name,
        "Datacenter.Datacenter.Value": dc.id,
        "ComputeResource.Name": cluster.name,
        "ComputeResource.ComputeResource.Value": cluster.id,
        "Host.Name": host.name,
        "Host.Host.Value": host.id,
    }


def vm_paths(vm: Vm, prefix: str = "Vm") -> dict[str, str]:
    return {f"{prefix}.Name": vm.name, f"{prefix}.Vm.Value": vm.id}


def host_paths(host: Host, prefix: str) -> dict[str, str]:
    return {f"{prefix}.Name": host.name, f"{prefix}.Host.Value": host.id}


def describe_vm(vm: Vm, subject: str) -> dict[str, str]:
    return {**placement(vm.host), **vm_paths(vm)}


def describe_host(host: Host, subject: str) -> dict[str, str]:
    return placement(host)


def const(weight: float) -> Callable[[World], float]:
    return lambda world: weight


def task(
    ctx: Ctx,
    user: str | None,
    *,
    name: str,
    description_id: str,
    label: str,
    entity: tuple[str, str, str],  # type, id, name
    args: dict[str, JSON],
) -> int:
    """Emit the TaskEvent that opens a task's chain; returns the chain id."""
    body = {**common(user or "", f"Task: {label}", **args), "Info": None}
    data = ctx.emit("TaskEvent", body, chain=None, delay=QUICK)
    type_, id_, entity_name = entity
    data["Info"] = task_info(
        key=data["Key"],
        name=name,
        description_id=description_id,
        entity=moref(type_, id_),
        entity_name=entity_name,
        user=user,
        queued=data["CreatedTime"],
    )
    return int(data["Key"])


def vm_task(ctx: Ctx, user: str, vm: Vm, name: str, method: str, label: str) -> int:
    return task(
        ctx,
        user,
        name=name,
        description_id=f"VirtualMachine.{method}",
        label=label,
        entity=("VirtualMachine", vm.id, vm.name),
        args=vm_args(vm),
    )
