"""echo: log each event it gets (subject, VM, user) and answer with the event.

The first function to deploy: it shows what arrives, in the function's log
(`veba logs echo`), as one JSON line per event, bound to the event's id.
"""

import os

from veba.sdk import Event, get_logger

log = get_logger()  # JSON lines on stderr; secrets (this function has none) redacted

# ECHO_DATA=true also logs the event's whole data (large events make large lines).
WITH_DATA = os.environ.get("ECHO_DATA", "").lower() in ("1", "true", "yes")


def handle(req):
    event = Event(req)  # NotACloudEvent (a 400, not retried) if req is not one
    vm = event.vm  # None for events without a VM (host, login, alarm on a host, ...)
    fields = {
        "vm": vm.name if vm else None,
        "moref": vm.value if vm else None,
        "user": event.user,
        "key": event.key,
        "message": event.message,
    }
    if WITH_DATA:
        fields["data"] = event.data
    log.info("%s", event.subject, **fields)
    return event.to_dict()
