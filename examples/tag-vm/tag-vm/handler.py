"""tag-vm: attach a vSphere tag to every VM that powers on.

Talks to the vSphere Automation REST API (``/rest``) with the standard library
only, so the function's venv has nothing to install:

1. ``POST /rest/com/vmware/cis/session`` with basic auth (user and password
   from the ``vcconfig`` secret) gives a session id, kept for the worker's life
   and sent as ``vmware-api-session-id``; a 401 (the session expired or was
   ended) logs in again, once, and repeats the request;
2. the tag is found by category and name, or created (``TAG_CATEGORY``,
   ``TAG_NAME``); its id is remembered too;
3. ``POST /rest/com/vmware/cis/tagging/tag-association/id:{tag}?~action=attach``
   with the VM's MoRef from the event.

``@idempotent`` makes a redelivery of an event (same CloudEvent id) return the
first call's result instead of attaching again.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import threading
import urllib.parse
from typing import Any

from veba.sdk import Event, VCenterConfig, get_logger, idempotent, remaining, vcenter_config

log = get_logger()

CATEGORY = os.environ.get("TAG_CATEGORY", "veba")
TAG = os.environ.get("TAG_NAME", "powered-on")
CREATE = os.environ.get("TAG_CREATE", "true").lower() in ("1", "true", "yes")

SESSION = "/rest/com/vmware/cis/session"
CATEGORIES = "/rest/com/vmware/cis/tagging/category"
TAGS = "/rest/com/vmware/cis/tagging/tag"
ASSOCIATION = "/rest/com/vmware/cis/tagging/tag-association"
REQUEST_TIMEOUT = 30.0


class VapiError(RuntimeError):
    """vCenter answered a REST call with an error (a 500 for the delivery: retried)."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(
            f"{method} {path}: vCenter answered {status}" + (f": {detail}" if detail else "")
        )
        self.status = status


class VapiLoginError(VapiError):
    """vCenter refused the credentials in the vcconfig secret."""


class VapiClient:
    """One vCenter's REST API over one keep-alive connection, logged in lazily."""

    def __init__(self, config: VCenterConfig) -> None:
        self.config = config
        self.session_id: str | None = None
        self.logins = 0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # -- HTTP ------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            c = self.config
            if c.scheme == "https":
                context = ssl.create_default_context()
                if c.insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._conn = http.client.HTTPSConnection(
                    c.host, c.port, timeout=REQUEST_TIMEOUT, context=context
                )
            else:  # http:// only for simulators
                self._conn = http.client.HTTPConnection(c.host, c.port, timeout=REQUEST_TIMEOUT)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _send(
        self, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, Any, str]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        left = remaining()  # the delivery's deadline: never wait past it
        timeout = REQUEST_TIMEOUT if left is None else max(0.5, min(REQUEST_TIMEOUT, left))
        for attempt in (1, 2):
            conn = self._connection()
            fresh = conn.sock is None
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                self.close()
                if attempt == 1 and not fresh:
                    continue  # vCenter closed an idle keep-alive connection: once more
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if response.will_close:
                self.close()
            text = raw.decode("utf-8", "replace")
            try:
                doc = json.loads(raw) if raw.strip() else None
            except ValueError:
                doc = None
            return response.status, doc, text
        raise AssertionError("unreachable")

    # -- the session ---------------------------------------------------------------------

    def login(self) -> None:
        token = f"{self.config.user}:{self.config.password}".encode()
        auth = {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}
        status, doc, text = self._send("POST", SESSION, None, auth)
        if status in (401, 403):
            raise VapiLoginError(
                "POST", SESSION, status, f"vCenter refused the credentials of {self.config.user!r}"
            )
        if status >= 400 or not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
            raise VapiError("POST", SESSION, status, text[:300])
        self.session_id = doc["value"]
        self.logins += 1
        log.info("logged in to the vSphere REST API", logins=self.logins)

    def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """The ``value`` of a REST call's answer; a 401 logs in again once.

        With ``missing_ok`` a 404 gives None instead of an error."""
        with self._lock:
            if self.session_id is None:
                self.login()
            status, doc, text = self._send(
                method, path, body, {"vmware-api-session-id": self.session_id or ""}
            )
            if status == 401:  # the session expired or was ended: a new one, once
                log.info("vSphere REST session expired: logging in again")
                self.session_id = None
                self.login()
                status, doc, text = self._send(
                    method, path, body, {"vmware-api-session-id": self.session_id or ""}
                )
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            detail = doc.get("type", "") if isinstance(doc, dict) else text[:300]
            raise VapiError(method, path, status, str(detail))
        return doc.get("value") if isinstance(doc, dict) else None

    # -- tagging ----------------------------------------------------------------------

    def find_category(self, name: str) -> str | None:
        for cid in self.call("GET", CATEGORIES) or []:
            category = self.call("GET", f"{CATEGORIES}/id:{_quote(cid)}", missing_ok=True)
            if isinstance(category, dict) and category.get("name") == name:
                return str(cid)
        return None

    def find_tag(self, category_id: str, name: str) -> str | None:
        path = f"{TAGS}/id:{_quote(category_id)}?~action=list-tags-for-category"
        for tid in self.call("POST", path) or []:
            tag = self.call("GET", f"{TAGS}/id:{_quote(tid)}", missing_ok=True)
            if isinstance(tag, dict) and tag.get("name") == name:
                return str(tid)
        return None

    def ensure_tag(self, category: str, name: str, create: bool) -> str:
        """The id of tag ``name`` in ``category``, both created if missing (and allowed)."""
        category_id = self.find_category(category)
        if category_id is None:
            if not create:
                raise LookupError(f"vCenter has no tag category {category!r} (TAG_CATEGORY)")
            spec = {
                "name": category,
                "description": "Tags set by veba functions",
                "cardinality": "MULTIPLE",
                "associable_types": [],  # any type of object
            }
            category_id = self._create(CATEGORIES, spec) or self.find_category(category)
            if category_id is None:
                raise LookupError(f"tag category {category!r} could not be created")
        tag_id = self.find_tag(category_id, name)
        if tag_id is None:
            if not create:
                raise LookupError(f"vCenter has no tag {name!r} in {category!r} (TAG_NAME)")
            spec = {"name": name, "description": "", "category_id": category_id}
            tag_id = self._create(TAGS, spec) or self.find_tag(category_id, name)
            if tag_id is None:
                raise LookupError(f"tag {name!r} could not be created in {category!r}")
        return tag_id

    def _create(self, path: str, spec: dict[str, Any]) -> str | None:
        """The new object's id; None if it already exists (another worker made it)."""
        try:
            return str(self.call("POST", path, {"create_spec": spec}))
        except VapiError as exc:
            if exc.status == 400 and "already_exists" in str(exc):
                return None
            raise

    def attach(self, tag_id: str, kind: str, moref: str) -> bool:
        """Attach the tag; False if vCenter does not know the tag (any more)."""
        path = f"{ASSOCIATION}/id:{_quote(tag_id)}?~action=attach"
        body = {"object_id": {"type": kind, "id": moref}}
        try:
            self.call("POST", path, body)
        except VapiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _quote(value: Any) -> str:
    return urllib.parse.quote(str(value), safe=":")


# --- warm state: one client and the tag's id per worker -----------------------------

_clients: dict[VCenterConfig, VapiClient] = {}
_tag_ids: dict[tuple[VCenterConfig, str, str], str] = {}


def client(config: VCenterConfig) -> VapiClient:
    found = _clients.get(config)
    if found is None:
        found = _clients[config] = VapiClient(config)
    return found


@idempotent  # key: the CloudEvent's source and id, which a redelivery keeps
def handle(req):
    event = Event(req)
    moref = event.require("data.Vm.Vm.Value")  # MissingField: a 422, straight to the DLQ
    kind = event.get("data.Vm.Vm.Type", "VirtualMachine")
    name = event.get("data.Vm.Name")
    config = vcenter_config("vcconfig")
    api = client(config)
    cache_key = (config, CATEGORY, TAG)
    tag_id = _tag_ids.get(cache_key)
    if tag_id is None or not api.attach(tag_id, kind, moref):
        # First call of this worker, or the remembered tag was deleted meanwhile.
        tag_id = _tag_ids[cache_key] = api.ensure_tag(CATEGORY, TAG, CREATE)
        if not api.attach(tag_id, kind, moref):
            raise LookupError(
                f"vCenter answered 404 to attaching tag {tag_id} to {kind} {moref}, a tag it"
                " has just found or made: the object or the tag is gone"
            )
    log.info("tagged", vm=name, moref=moref, tag=TAG, category=CATEGORY)
    return {"vm": name, "moref": moref, "tag": TAG, "category": CATEGORY, "tag_id": tag_id}
