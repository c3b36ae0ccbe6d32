"""veba.sdk: the function authors' kit, importable in every function's venv.

Pure Python, standard library only (pyVmomi is imported by `vcenter_session`
alone, when called). The appliance puts a copy of this package on each worker's
path, so ``import veba.sdk`` works without listing anything in requirements.txt.

```python
from veba.sdk import Event, get_logger, retry, secret, vcenter_session

log = get_logger()

def handle(req):
    event = Event(req)
    vm = event.require("data.Vm.Vm.Value")     # MissingField: a clear error, not retried
    token = secret("api-token")                # SecretNotFound names what to declare
    retry(lambda: post(vm, token), attempts=4)  # never outlives the delivery's deadline
    log.info("posted", vm=event.vm.name)
```
"""

from __future__ import annotations

from veba.sdk._call import attempt, deadline, remaining
from veba.sdk.backoff import retry
from veba.sdk.event import Event, MissingField, MoRef, NotACloudEvent
from veba.sdk.log import Logger, get_logger, redact
from veba.sdk.secrets import (
    SecretFormatError,
    SecretNotFound,
    secret,
    secret_bytes,
    secret_json,
    secret_names,
    secret_toml,
    secrets_dir,
)
from veba.sdk.state import idempotent, latest_only, store
from veba.sdk.vcenter import VCenterConfig, VCenterConfigError, vcenter_config, vcenter_session

__all__ = [
    "Event",
    "Logger",
    "MissingField",
    "MoRef",
    "NotACloudEvent",
    "SecretFormatError",
    "SecretNotFound",
    "VCenterConfig",
    "VCenterConfigError",
    "attempt",
    "deadline",
    "get_logger",
    "idempotent",
    "latest_only",
    "redact",
    "remaining",
    "retry",
    "secret",
    "secret_bytes",
    "secret_json",
    "secret_names",
    "secret_toml",
    "secrets_dir",
    "store",
    "vcenter_config",
    "vcenter_session",
]
