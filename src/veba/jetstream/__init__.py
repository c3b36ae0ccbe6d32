"""What the appliance keeps, in JetStream, shared by every node of a cluster.

Each backend implements a protocol of its own module and runs its conformance
suite; all take a connected client (or JetStream context), a bucket prefix
(`veba` by default) and `replicas` (1 by default). Imported only with the
`nats` extra. Buckets (docs/design.md, "What the appliance keeps in JetStream"):

- `<prefix>_store` (KV): the functions' `Store` — `JetStreamStore`;
- `<prefix>_secrets` (KV): encrypted secrets, a `SecretBlobs` — `JetStreamSecretBlobs`;
- `<prefix>_functions` (KV) and `<prefix>_code` (object store): deployed
  functions' definitions, paused flags and code, `FunctionRecords` —
  `JetStreamFunctionRecords`.
"""

from veba.jetstream.functions import JetStreamFunctionRecords
from veba.jetstream.secrets import JetStreamSecretBlobs
from veba.jetstream.store import JetStreamStore

__all__ = ["JetStreamFunctionRecords", "JetStreamSecretBlobs", "JetStreamStore"]
