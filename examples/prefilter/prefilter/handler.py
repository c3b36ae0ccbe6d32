"""prefilter: drop events about VMs you do not care about; forward the rest.

An event is dropped when its VM's name matches ``DROP_VM_NAME`` or the VM's
inventory path (``/DC0/vm/Sandbox/test-01``, as the vSphere Client's VMs and
Templates view shows it) matches ``DROP_VM_PATH`` (Python regular expressions,
``re.search``). Events without a VM always pass.

What passes is posted (structured-mode CloudEvent) to ``FORWARD_URL`` and the
downstream's answer is this function's answer; without ``FORWARD_URL`` the event
is the answer, for a caller that chains functions itself. The path is looked up
in vCenter with pyVmomi (``vcconfig`` secret), only when ``DROP_VM_PATH`` is set.
"""

from __future__ import annotations

import functools
import os
import re
import urllib.error
import urllib.request
from typing import Any

from veba.sdk import Event, get_logger, remaining, retry, vcenter_session

log = get_logger()

DROP_VM_NAME = os.environ.get("DROP_VM_NAME", "")
DROP_VM_PATH = os.environ.get("DROP_VM_PATH", "")
FORWARD_URL = os.environ.get("FORWARD_URL", "").strip()
FORWARD_ATTEMPTS = int(os.environ.get("FORWARD_ATTEMPTS", "4"))
CLOUDEVENT = "application/cloudevents+json"


class DownstreamUnavailable(RuntimeError):
    """The downstream did not take the event but may later (429, 5xx)."""


@functools.cache
def pattern(variable: str, text: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"{variable}={text!r} is not a valid regular expression: {exc}") from None


def handle(event, context):
    ev = Event(event)
    by_name = pattern("DROP_VM_NAME", DROP_VM_NAME)
    by_path = pattern("DROP_VM_PATH", DROP_VM_PATH)
    reason = None
    vm = ev.vm
    if vm is not None:
        if by_name is not None and vm.name and by_name.search(vm.name):
            reason = f"VM name {vm.name!r} matches DROP_VM_NAME"
        elif by_path is not None:
            path = inventory_path(vm.value)
            if path is None:
                log.warning("VM not found in vCenter: its path is unknown; kept", moref=vm.value)
            elif by_path.search(path):
                reason = f"VM path {path!r} matches DROP_VM_PATH"
    if reason is not None:
        log.info("dropped", reason=reason)
        return {
            "statusCode": 200,
            "body": {"dropped": True, "reason": reason},
            "headers": {"X-Veba-Dropped": "prefilter"},
        }
    if not FORWARD_URL:
        return {"statusCode": 200, "body": ev.to_json(), "headers": {"Content-Type": CLOUDEVENT}}
    status, headers, body = retry(
        lambda: forward(ev.to_json()),
        attempts=FORWARD_ATTEMPTS,
        on=(DownstreamUnavailable, ConnectionError, TimeoutError),  # at least once: fine
    )
    log.info("forwarded", status=status)
    return {"statusCode": status, "body": body, "headers": headers}


def forward(body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Post the event downstream: its status, content type and body."""
    left = remaining()
    timeout = 30.0 if left is None else max(0.2, min(30.0, left))
    request = urllib.request.Request(
        FORWARD_URL, data=body, headers={"Content-Type": CLOUDEVENT}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = response.headers.get("Content-Type")
            return response.status, ({"Content-Type": kind} if kind else {}), response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise DownstreamUnavailable(f"downstream answered {exc.code}") from None
        kind = exc.headers.get("Content-Type")
        return exc.code, ({"Content-Type": kind} if kind else {}), exc.read()  # its answer
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionError | TimeoutError):
            raise exc.reason from None  # refused, reset, timed out: retried
        raise


def inventory_path(moref: str) -> str | None:
    """``/Datacenter/vm/Folder/VM``, or None when vCenter has no such VM (any more)."""
    from pyVmomi import vim, vmodl  # only this path needs pyVmomi

    si = vcenter_session("vcconfig")
    root = si.content.rootFolder
    obj: Any = vim.VirtualMachine(moref, si._stub)
    names = []
    try:
        while obj is not None and obj != root:
            names.append(obj.name)
            parent = obj.parent
            if parent is None and isinstance(obj, vim.VirtualMachine):
                parent = obj.parentVApp  # a VM in a vApp
            obj = parent
    except vmodl.fault.ManagedObjectNotFound:
        return None
    return "/" + "/".join(reversed(names))
