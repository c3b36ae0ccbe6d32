"""What the appliance keeps, in JetStream, shared by every node of a cluster.

Each backend implements a protocol of its own module and runs its conformance
suite; all take a connected client (or JetStream context) and a bucket prefix
(`veba` by default: `veba_store`, ...). Imported only with the `nats` extra.
"""

from veba.jetstream.secrets import JetStreamSecretBlobs
from veba.jetstream.store import JetStreamStore

__all__ = ["JetStreamSecretBlobs", "JetStreamStore"]
