"""Where the appliance keeps what it keeps: on this node, or in NATS JetStream.

`local` (the default, `veba serve --event-log sqlite`): the SQLite log in the
data directory, the functions' store in the log's file, secrets and deployed
functions as files beside it, and this node leads every provider.

`jetstream` (`--event-log nats://HOST:4222[,...][/NAME]`): the log, the store,
the encrypted secrets, the deployed functions and the providers' leases all in
one NATS JetStream (NAME prefixes every stream and bucket), shared by every
node started with the same location, so any node may die. One client serves
them all; it is connected in `open` (the backends are made before, unconnected,
and touch NATS only once opened). What stays on each node: its API token, the
secrets' key (`secret.key`, which nodes sharing secrets must share), function
logs, unpacked code and virtualenvs.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veba.eventlog import EventLog, SQLiteLog
from veba.eventlog.sqlite_store import SQLiteStore
from veba.leadership import Leadership, SoleLeadership

if TYPE_CHECKING:
    from nats.aio.client import Client

    from veba.eventlog.ownerlock import OwnerLock
    from veba.functionrecords import FunctionRecords
    from veba.natsurl import NatsLocation
    from veba.secrets import SecretBlobs
    from veba.settings import ApplianceSettings
    from veba.store import Store

__all__ = ["Backends", "backends_for"]


@dataclass
class Backends:
    log: EventLog
    store: Store
    # None: files in the data directory (`SecretStore`'s and `Functions`' own).
    secret_blobs: SecretBlobs | None = None
    function_records: FunctionRecords | None = None
    leadership: Leadership = field(default_factory=SoleLeadership)
    # Set for the JetStream backends: where, and the client they share.
    location: NatsLocation | None = None
    replicas: int = 1
    client: Client | None = None

    @property
    def shared(self) -> bool:
        """Whether other nodes share this state (and so a provider's lease)."""
        return self.location is not None

    async def open(self) -> None:
        """Connect (JetStream), then open the log."""
        if self.location is not None and self.client is not None:
            from veba.leadership import KVLeadership, lease_bucket
            from veba.natsurl import connect

            _, js = await connect(self.location, client=self.client, client_name=_node_name())
            self.leadership = await KVLeadership.open(
                self.client, js, lease_bucket(self.location), replicas=self.replicas
            )
        await self.log.open()

    async def close(self) -> None:
        await self.log.close()
        if self.client is not None and not self.client.is_closed:
            await self.client.drain()


def backends_for(settings: ApplianceSettings, lock: OwnerLock | None = None) -> Backends:
    """The backends `settings.event_log` names (unconnected, unopened)."""
    if settings.event_log is None:
        log = SQLiteLog(settings.log_path, lock=lock)
        return Backends(log=log, store=SQLiteStore(log))
    return _jetstream(settings.event_log, settings.replicas)


def _jetstream(location: NatsLocation, replicas: int) -> Backends:
    from nats.aio.client import Client

    from veba.eventlog.jetstream import JetStreamLog
    from veba.jetstream import JetStreamFunctionRecords, JetStreamSecretBlobs, JetStreamStore

    client = Client()
    prefix = location.name
    return Backends(
        log=JetStreamLog(location.servers, name=prefix, replicas=replicas, client=client),
        store=JetStreamStore(client, prefix, replicas=replicas),
        secret_blobs=JetStreamSecretBlobs(client, prefix, replicas=replicas),
        function_records=JetStreamFunctionRecords(client, prefix, replicas=replicas),
        location=location,
        replicas=replicas,
        client=client,
    )


def _node_name() -> str:
    return f"veba@{socket.gethostname()}"
