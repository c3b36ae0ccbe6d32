"""The simulated vCenter's inventory and the state its events change.

Managed object ids come from one counter, as in vCenter (`datacenter-2`,
`domain-c7`, `host-21`, `vm-56`), with small seeded gaps, so they are unique and
the same for the same seed and sizes.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Literal

from veba.providers.simulator._shapes import JSON, entity_arg

PowerState = Literal["poweredOn", "poweredOff", "suspended"]
AlarmStatus = Literal["gray", "green", "yellow", "red"]

VM_PREFIXES = (
    "web", "app", "db", "cache", "k8s-worker", "k8s-cp", "build", "jump",
    "mon", "log", "dns", "mq", "ci-runner", "backup", "vpn",
)  # fmt: skip
GUEST_IDS = (
    "ubuntu64Guest", "rhel9_64Guest", "debian12_64Guest",
    "windows2019srv_64Guest", "photon64Guest",
)  # fmt: skip
TAGS = ("backup-gold", "backup-silver", "env-prod", "env-dev", "pci", "owner-platform")


@dataclass(eq=False)
class Datacenter:
    id: str
    name: str
    vm_folder: str
    clusters: list[Cluster] = field(default_factory=list, repr=False)
    networks: list[Network] = field(default_factory=list, repr=False)

    def arg(self) -> JSON:
        return entity_arg(self.name, "Datacenter", "Datacenter", self.id)


@dataclass(eq=False)
class Cluster:
    id: str
    name: str
    datacenter: Datacenter = field(repr=False)
    hosts: list[Host] = field(default_factory=list, repr=False)
    datastore: Datastore | None = field(default=None, repr=False)

    def arg(self) -> JSON:
        return entity_arg(self.name, "ComputeResource", "ClusterComputeResource", self.id)


@dataclass(eq=False)
class Host:
    id: str
    name: str
    cluster: Cluster = field(repr=False)
    local_datastore: Datastore | None = field(default=None, repr=False)
    maintenance: bool = False

    def arg(self) -> JSON:
        return entity_arg(self.name, "Host", "HostSystem", self.id)


@dataclass(eq=False)
class Datastore:
    id: str
    name: str
    datacenter: Datacenter = field(repr=False)

    def arg(self) -> JSON:
        return entity_arg(self.name, "Datastore", "Datastore", self.id)


@dataclass(eq=False)
class Network:
    id: str
    name: str
    type: str  # Network | VmwareDistributedVirtualSwitch | DistributedVirtualPortgroup


@dataclass(eq=False)
class Vm:
    id: str
    name: str
    host: Host = field(repr=False)
    datastore: Datastore = field(repr=False)
    power: PowerState
    num_cpu: int
    memory_mb: int
    guest_id: str
    uuid: str
    instance_uuid: str
    hw_version: str = "vmx-20"
    cpu_hot_add: bool = False
    memory_hot_add: bool = False
    annotation: str = ""
    change_version: str = ""

    def arg(self) -> JSON:
        return entity_arg(self.name, "Vm", "VirtualMachine", self.id)

    @property
    def vmx_path(self) -> str:
        return f"[{self.datastore.name}] {self.name}/{self.name}.vmx"


@dataclass(frozen=True)
class AlarmDef:
    id: str
    name: str
    entity_type: str  # VirtualMachine | HostSystem | Datastore


@dataclass(frozen=True)
class Client:
    """Who logs in from where with what: the sessions' raw material."""

    user: str
    ip: str
    agent: str


@dataclass(eq=False)
class Session:
    id: str
    client: Client
    login_time: str = ""


ALARMS = (
    ("Virtual machine CPU usage", "VirtualMachine"),
    ("Virtual machine memory usage", "VirtualMachine"),
    ("Host CPU usage", "HostSystem"),
    ("Host memory usage", "HostSystem"),
    ("Datastore usage on disk", "Datastore"),
)
CLIENTS = (
    Client("VSPHERE.LOCAL\\Administrator", "10.0.0.21", "VMware vSphere Client/8.0.2.00000"),
    Client("VSPHERE.LOCAL\\Administrator", "10.0.0.21", "PowerCLI/13.2.1"),
    Client("VSPHERE.LOCAL\\svc-veba", "10.0.0.40", "pyvmomi Python/3.11.7 (Linux; 6.1.0; x86_64)"),
    Client("VSPHERE.LOCAL\\svc-backup", "10.0.0.52", "VMware-client/6.5.0"),
    Client("LAB\\alice", "10.0.8.17", "VMware vSphere Client/8.0.2.00000"),
    Client("LAB\\bob", "10.0.8.23", "govc/0.37.0"),
)
USERS = (
    "VSPHERE.LOCAL\\Administrator",
    "VSPHERE.LOCAL\\Administrator",
    "VSPHERE.LOCAL\\svc-veba",
    "LAB\\alice",
    "LAB\\bob",
)
RESOURCES = {
    "storage_util_filesystem_log": "vCenter Log File System",
    "storage_util_filesystem_db": "vCenter Database File System",
    "storage_util_filesystem_core": "vCenter Core File System",
}


@dataclass(eq=False)
class World:
    """Everything the simulator knows; operations read and change it."""

    vcenter_host: str
    root_folder: str
    datacenters: list[Datacenter]
    hosts: list[Host]
    datastores: list[Datastore]
    vms: dict[str, Vm]
    alarms: list[AlarmDef]
    machine_user: str
    extension_user: str
    initial_vms: int
    moref_base: int = 0  # new VMs get vm-<moref_base + key of their task event>
    alarm_status: dict[tuple[str, str], AlarmStatus] = field(default_factory=dict)
    vm_tags: dict[str, list[str]] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    resource_status: dict[str, AlarmStatus] = field(default_factory=dict)
    name_counters: dict[str, int] = field(default_factory=dict)

    @property
    def clusters(self) -> list[Cluster]:
        return [c for dc in self.datacenters for c in dc.clusters]

    def active_hosts(self, cluster: Cluster) -> list[Host]:
        return [h for h in cluster.hosts if not h.maintenance]

    def new_vm_name(self, rng: random.Random) -> str:
        prefix = rng.choice(VM_PREFIXES)
        names = {vm.name for vm in self.vms.values()}
        while True:
            n = self.name_counters.get(prefix, 0) + 1
            self.name_counters[prefix] = n
            name = f"{prefix}-{n:02d}"
            if name not in names:
                return name

    def find_vm(self, name: str) -> Vm | None:
        return next((vm for vm in self.vms.values() if vm.name == name), None)


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def new_vm(rng: random.Random, vm_id: str, name: str, host: Host, power: PowerState) -> Vm:
    datastore = host.cluster.datastore
    assert datastore is not None
    return Vm(
        id=vm_id,
        name=name,
        host=host,
        datastore=datastore,
        power=power,
        num_cpu=rng.choice((1, 2, 2, 4, 4, 8)),
        memory_mb=rng.choice((1024, 2048, 4096, 4096, 8192, 16384)),
        guest_id=rng.choice(GUEST_IDS),
        uuid=random_uuid(rng),
        instance_uuid=random_uuid(rng),
        hw_version=rng.choice(("vmx-19", "vmx-20", "vmx-21")),
    )


def build_world(
    rng: random.Random,
    *,
    vcenter_host: str,
    instance_uuid: str,
    datacenters: int,
    clusters_per_dc: int,
    hosts_per_cluster: int,
    vms_per_host: int,
) -> World:
    """The seeded inventory; ids of objects created later continue past `moref_base`."""
    counter = 0

    def next_id(prefix: str) -> str:
        nonlocal counter
        counter += rng.randint(1, 3)
        return f"{prefix}{counter}"

    counter = 1  # group-d1 is the root folder in every vCenter
    dcs: list[Datacenter] = []
    hosts: list[Host] = []
    datastores: list[Datastore] = []
    cluster_no = host_no = 0
    for d in range(1, datacenters + 1):
        dc = Datacenter(id=next_id("datacenter-"), name=f"DC{d:02d}", vm_folder="")
        dc.vm_folder = next_id("group-v")
        next_id("group-h"), next_id("group-s"), next_id("group-n")
        dc.networks.append(Network(next_id("network-"), "VM Network", "Network"))
        dc.networks.append(
            Network(next_id("dvs-"), f"DSwitch-{d:02d}", "VmwareDistributedVirtualSwitch")
        )
        for vlan in (10, 20):
            dc.networks.append(
                Network(next_id("dvportgroup-"), f"pg-vlan{vlan}", "DistributedVirtualPortgroup")
            )
        dcs.append(dc)
        for _ in range(clusters_per_dc):
            cluster_no += 1
            cluster = Cluster(
                id=next_id("domain-c"), name=f"Cluster-{cluster_no:02d}", datacenter=dc
            )
            suffix = "" if cluster_no == 1 else f" ({cluster_no - 1})"
            cluster.datastore = Datastore(next_id("datastore-"), f"vsanDatastore{suffix}", dc)
            datastores.append(cluster.datastore)
            dc.clusters.append(cluster)
            for _ in range(hosts_per_cluster):
                host_no += 1
                host = Host(
                    id=next_id("host-"), name=f"esx{host_no:02d}.lab.local", cluster=cluster
                )
                local = f"datastore1 ({host_no - 1})" if host_no > 1 else "datastore1"
                host.local_datastore = Datastore(next_id("datastore-"), local, dc)
                datastores.append(host.local_datastore)
                cluster.hosts.append(host)
                hosts.append(host)

    short = instance_uuid.replace("-", "")
    world = World(
        vcenter_host=vcenter_host,
        root_folder="group-d1",
        datacenters=dcs,
        hosts=hosts,
        datastores=datastores,
        vms={},
        alarms=[AlarmDef(next_id("alarm-"), name, kind) for name, kind in ALARMS],
        machine_user=f"machine-{short[:8]}",
        extension_user=f"VSPHERE.LOCAL\\vpxd-extension-{instance_uuid}",
        initial_vms=len(hosts) * vms_per_host,
    )
    for host in hosts:
        for _ in range(vms_per_host):
            power: PowerState = "poweredOn" if rng.random() < 0.7 else "poweredOff"
            vm = new_vm(rng, next_id("vm-"), world.new_vm_name(rng), host, power)
            world.vms[vm.id] = vm
            if rng.random() < 0.25:
                world.vm_tags[vm.id] = [rng.choice(TAGS)]
    world.resource_status = dict.fromkeys(RESOURCES, "green")
    world.moref_base = counter
    return world
