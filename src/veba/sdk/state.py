"""State kept in the appliance between calls: `@idempotent`, `@latest_only`, `store()`.

Standard library only: this runs inside function venvs. The state lives in the
appliance's key-value store, reached over its API (``VEBA_API_URL``) with the
token the appliance gives each function's workers (``VEBA_STORE_TOKEN``), which
opens the function's own namespace only. So it holds across the workers of a
function, across restarts, and across nodes once the log runs on NATS.

```python
from veba.sdk import idempotent, latest_only

@idempotent(key="data.Key", expires_after=3600)
def handle(req):                 # python3, python3-http or veba-cloudevent signature
    open_ticket(...)             # runs once per key; a duplicate gets the stored result

@latest_only(key="data.Vm.Vm.Value")
def handle(event, ctx):
    apply_state(event)           # an event older (by vCenter Key) than one seen is dropped
```

When the store cannot be reached the call fails (`StoreUnavailable`, a 503) and
the delivery is retried: these decorators never let a call through unchecked.

Where each part lives: the store client in `veba.sdk._store`, `@idempotent` in
`veba.sdk._idempotent`, `@latest_only` in `veba.sdk._latest_only`, and what both
decorators need of the call they wrap in `veba.sdk._handler_call`. This module
is their public face: import from here (or `veba.sdk`), not from those.
"""

from __future__ import annotations

# DEFAULT_EXPIRES_AFTER is offered here too, though not in __all__ (as before).
from veba.sdk._idempotent import DEFAULT_EXPIRES_AFTER as DEFAULT_EXPIRES_AFTER
from veba.sdk._idempotent import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    Status,
    idempotent,
)
from veba.sdk._latest_only import latest_only
from veba.sdk._store import (
    Entry,
    RevisionConflict,
    StoreClient,
    StoreDenied,
    StoreError,
    StoreUnavailable,
    store,
)

__all__ = [
    "Entry",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "RevisionConflict",
    "Status",
    "StoreClient",
    "StoreDenied",
    "StoreError",
    "StoreUnavailable",
    "idempotent",
    "latest_only",
    "store",
]
