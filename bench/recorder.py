"""Record when a handler starts, cheaply, the same way in all three systems.

Each process appends ``"<event id> <time.time()>\\n"`` to its own file,
``<out_dir>/starts-<system>-<pid>.txt``. Lines are buffered and written every
``flush_every`` lines or when ``flush_interval`` seconds have passed since the
last write; a daemon thread writes leftovers, so the tail of a run reaches the
file within about ``flush_interval`` even when no further event arrives.

Standard library only: the veba no-op function imports this file from inside its
own virtual environment, where nothing else of the bench is installed.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

__all__ = ["StartRecorder"]


class StartRecorder:
    def __init__(
        self,
        out_dir: str,
        system: str,
        *,
        flush_every: int = 50,
        flush_interval: float = 0.05,
        idle_exit: float = 600.0,
    ) -> None:
        self._out_dir = out_dir
        self._system = system
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._idle_exit = idle_exit
        self._reset()
        # Celery's prefork pool forks after import: a child must not inherit the
        # parent's buffer, file or (possibly held) lock.
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._file = None
        self._pid = 0
        self._last_flush = time.monotonic()
        self._last_record = self._last_flush
        self._flusher: threading.Thread | None = None

    def record(self, event_id: str) -> None:
        """Call first thing in the handler."""
        now = time.time()
        with self._lock:
            self._lines.append(f"{event_id} {now:.6f}\n")
            mono = time.monotonic()
            self._last_record = mono
            if self._file is None:
                self._open()
            if (
                len(self._lines) >= self._flush_every
                or mono - self._last_flush > self._flush_interval
            ):
                self._write()

    def flush(self) -> None:
        with self._lock:
            if self._lines and self._file is not None:
                self._write()

    def _open(self) -> None:
        self._pid = os.getpid()
        path = os.path.join(self._out_dir, f"starts-{self._system}-{self._pid}.txt")
        self._file = open(path, "a", encoding="ascii")  # noqa: SIM115 - lives with the process
        self._flusher = threading.Thread(target=self._flush_loop, name="bench-flush", daemon=True)
        self._flusher.start()

    def _write(self) -> None:
        assert self._file is not None
        self._file.write("".join(self._lines))
        self._file.flush()
        self._lines.clear()
        self._last_flush = time.monotonic()

    def _flush_loop(self) -> None:
        # Bounded: ends after idle_exit seconds without a record; the next
        # record() after that reopens the file and restarts it.
        while True:
            time.sleep(self._flush_interval * 2)
            with self._lock:
                if self._lines:
                    self._write()
                elif time.monotonic() - self._last_record > self._idle_exit:
                    if self._file is not None:
                        self._file.close()
                    self._file = None
                    self._flusher = None
                    return
