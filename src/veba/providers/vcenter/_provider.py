"""`VCenterProvider`: one vCenter's event stream, published into the log.

pyVmomi blocks, so the stream runs in a thread of its own; each batch it reads
is handed to the event loop with `run_coroutine_threadsafe` and the thread
waits until the batch and its checkpoint are committed together. The
checkpoint (the last Key and its CreatedTime) is stored under the provider's
name, `vcenter:<host:port>`, so each vCenter resumes on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from veba.events import Event
from veba.providers.base import EventSink
from veba.providers.vcenter._keys import Checkpoint
from veba.providers.vcenter._session import PyVmomiSession, VCenterEndpoint
from veba.providers.vcenter._stream import Session, Stream, StreamOptions, describe

if TYPE_CHECKING:
    from veba.config import VCenterConfig
    from veba.secrets import SecretStore

__all__ = ["VCenterProvider"]

log = logging.getLogger("veba.providers.vcenter")

_STOP_GRACE = 5.0  # seconds to let the thread log out before leaving it behind


class VCenterProvider:
    type = "vcenter"

    def __init__(
        self,
        endpoint: VCenterEndpoint,
        *,
        name: str | None = None,
        label: str | None = None,
        page_size: int = 10,
        waiters: int = 2,
        options: StreamOptions | None = None,
        session_factory: Callable[[], Session] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name or f"vcenter:{endpoint.netloc}"
        self.label = label  # the RouterConfig's provider name, if it came from one
        self.options = options or StreamOptions()
        self._session_factory = session_factory or (
            lambda: PyVmomiSession(
                endpoint,
                page_size=page_size,
                waiters=waiters,
            )
        )
        self._stream: Stream | None = None
        self._running = False
        self._last_error: str | None = None
        # EventManager descriptions (the catalogue's), read once per connection.
        self._event_types: tuple[int, list[dict[str, Any]]] | None = None
        self._event_types_lock = asyncio.Lock()
        self._secret_password: _SecretPassword | None = None  # see from_config

    @classmethod
    def from_config(
        cls, config: VCenterConfig, secrets: SecretStore | None = None
    ) -> VCenterProvider:
        """A provider for one `vcenter` entry of the appliance's config.

        The password is looked up at each login (inline, a veba secret or an
        environment variable), so a rotated secret is picked up on the next one.
        """

        from_secret = (
            _SecretPassword(secrets, config.password_secret) if config.password_secret else None
        )

        def password() -> str:
            if config.password is not None:
                return config.password
            if from_secret is not None:
                return from_secret()
            if config.password_env:
                value = os.environ.get(config.password_env)
                if value is None:
                    raise RuntimeError(f"${config.password_env} (the vCenter password) is not set")
                return value
            raise RuntimeError("no password configured")

        endpoint = VCenterEndpoint(
            config.address,
            config.username,
            password,
            insecure=config.insecure_ssl,
            ca_files=config.root_cas,
        )
        provider = cls(endpoint, label=config.name)
        provider._secret_password = from_secret
        return provider

    def _bind_loop(self) -> None:
        """Logins (in threads) read a secret password on the loop the provider runs on."""
        if self._secret_password is not None:
            self._secret_password.loop = asyncio.get_running_loop()

    def status(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "source": self.endpoint.source,
            "label": self.label,
        }
        stream = self._stream
        if stream is None:  # not started yet
            return {
                **base,
                "state": "starting" if self._running else "stopped",
                "connected": False,
                "last_key": None,
                "events": 0,
                "last_error": self._last_error,
            }
        return {**base, **stream.status()}

    async def event_types(self) -> list[dict[str, Any]]:
        """This vCenter's `EventManager.description.eventInfo` (key, category,
        description, longDescription, fullFormat per type), for the event catalogue.

        Read with a login of its own the first time it is asked for, and again
        only after the stream has reconnected (the vCenter may have changed).
        """
        async with self._event_types_lock:
            stream = self._stream
            connection = stream.reconnects if stream is not None else -1
            if self._event_types is None or self._event_types[0] != connection:
                self._bind_loop()
                types = await asyncio.to_thread(self._read_event_types)
                self._event_types = (connection, types)
            return self._event_types[1]

    def _read_event_types(self) -> list[dict[str, Any]]:
        session = self._session_factory()
        try:
            session.connect()
            read = getattr(session, "event_descriptions", None)
            return list(read()) if read is not None else []
        finally:
            session.close()

    async def run(self, sink: EventSink) -> None:
        if self._running:
            raise RuntimeError(f"provider {self.name!r} is already running")
        self._running = True
        try:
            await self._run(sink)
        finally:
            self._running = False

    async def _run(self, sink: EventSink) -> None:
        checkpoint = await self._restore(sink)
        loop = asyncio.get_running_loop()
        self._bind_loop()

        def publish(events: Sequence[Event], value: str) -> None:
            future = asyncio.run_coroutine_threadsafe(
                sink.publish(events, checkpoint=(self.name, value)), loop
            )
            future.result()

        stream = Stream(
            self._session_factory,
            source=self.endpoint.source,
            publish=publish,
            checkpoint=checkpoint,
            options=self.options,
        )
        done = loop.create_future()

        def follow() -> None:
            error: BaseException | None = None
            try:
                stream.run()
            except BaseException as exc:
                error = exc
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(_settle, done, error)

        self._stream = stream
        thread = threading.Thread(target=follow, name=self.name, daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)  # raises what ended the thread, if not a stop
        finally:
            stream.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_GRACE):
                    await asyncio.shield(done)
            self._last_error = stream.last_error

    async def _restore(self, sink: EventSink) -> Checkpoint | None:
        backoff = self.options.backoff_first
        while True:
            try:
                value = await sink.checkpoint(self.name)
                break
            except Exception as exc:
                self._last_error = f"reading the checkpoint: {describe(exc)}"
                log.warning("%s: %s", self.name, self._last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.options.backoff_max)
        if value is None:
            return None
        try:
            return Checkpoint.loads(value)
        except ValueError as exc:
            self._last_error = f"ignored checkpoint: {exc}"
            log.warning("%s: %s", self.name, self._last_error)
            return None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _SecretPassword:
    """A vCenter password kept as a veba secret, read afresh at each login (a
    rotated secret is used at the next one). Logins run in threads (pyVmomi
    blocks) and the secret store is async, on the appliance's loop: the read is
    handed to that loop and waited for."""

    def __init__(self, secrets: SecretStore | None, name: str) -> None:
        self._secrets = secrets
        self._name = name
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the provider starts

    def __call__(self) -> str:
        if self._secrets is None:
            raise RuntimeError("no secret store to read the vCenter password from")
        if self.loop is None:
            raise RuntimeError("the vCenter provider has not started")
        read = asyncio.run_coroutine_threadsafe(self._secrets.get(self._name), self.loop)
        return read.result(timeout=60).decode().rstrip("\r\n")
