"""What is kept of each deployed function: its definition, its code, whether
it is paused. `Functions` (deployments.py) reads these at start and writes them
at each deploy, pause and removal; every node of a cluster shares them when
they live in JetStream (`veba.jetstream.functions`).

The code is the packed archive the deploy sent (tar.gz); the definition names
it by `code_hash` (the first 16 hex digits of its SHA-256). The folder a node's
workers run, `<functions dir>/<name>/code-<hash>/`, and its venv are that
node's cache, unpacked from the archive, not part of the record.

`FileFunctionRecords` keeps veba's layout on disk, where the unpacked folder
is the code itself:

    <functions dir>/<name>/function.json   the definition
    <functions dir>/<name>/code-<hash>/    the code, unpacked
    <functions dir>/<name>/paused          present while paused
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veba.codearchive import pack_folder, unpack

__all__ = ["DEFINITION", "PAUSED", "FileFunctionRecords", "FunctionRecord", "FunctionRecords"]

log = logging.getLogger("veba.functionrecords")

DEFINITION = "function.json"
PAUSED = "paused"  # the file, beside function.json, of a paused function


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    definition: dict[str, Any]  # FunctionDefinition.to_dict(): name, code_hash, ...
    paused: bool = False

    @property
    def code_hash(self) -> str:
        return str(self.definition.get("code_hash", ""))


class FunctionRecords(Protocol):
    """The deployed functions' definitions, code and paused flags, by name."""

    async def save(self, name: str, definition: Mapping[str, Any], code: bytes) -> FunctionRecord:
        """Keep `definition` and its packed `code` (named by the definition's
        `code_hash`) as `name`'s, replacing its definition; the paused flag
        stays as it was. The code is kept before the definition, so a reader
        never finds a definition without its code."""
        ...

    async def get(self, name: str) -> FunctionRecord | None: ...

    async def all(self) -> dict[str, FunctionRecord]:
        """Every kept function, by name."""
        ...

    async def code(self, name: str, code_hash: str) -> bytes | None:
        """The packed code of `name` with that hash (the same files, if not the
        same bytes, as were saved); None if it is not kept."""
        ...

    async def set_paused(self, name: str, paused: bool) -> bool:
        """Mark `name` paused (or not); False if no such function is kept."""
        ...

    async def remove(self, name: str) -> bool:
        """Forget `name`: definition, code and flag; False if it was not kept."""
        ...


class FileFunctionRecords:
    """Function records in veba's folders on disk (see the module's docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"FileFunctionRecords({str(self.folder)!r})"

    async def save(self, name: str, definition: Mapping[str, Any], code: bytes) -> FunctionRecord:
        home = self.folder / name
        code_dir = home / f"code-{definition['code_hash']}"
        if not code_dir.exists():  # `Functions` has unpacked it already, as its workers' folder
            unpack(code, code_dir)
        _write_json(home / DEFINITION, definition)
        return FunctionRecord(dict(definition), (home / PAUSED).exists())

    async def get(self, name: str) -> FunctionRecord | None:
        return _read(self.folder / name)

    async def all(self) -> dict[str, FunctionRecord]:
        if not self.folder.is_dir():
            return {}
        found = {}
        for home in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            record = _read(home)
            if record is not None:
                found[home.name] = record
        return found

    async def code(self, name: str, code_hash: str) -> bytes | None:
        code_dir = self.folder / name / f"code-{code_hash}"
        return pack_folder(code_dir) if code_dir.is_dir() else None

    async def set_paused(self, name: str, paused: bool) -> bool:
        home = self.folder / name
        if not (home / DEFINITION).is_file():
            return False
        if paused:
            (home / PAUSED).touch(mode=0o600)
        else:
            (home / PAUSED).unlink(missing_ok=True)
        return True

    async def remove(self, name: str) -> bool:
        home = self.folder / name
        kept = (home / DEFINITION).is_file()
        shutil.rmtree(home, ignore_errors=True)
        return kept


def _read(home: Path) -> FunctionRecord | None:
    """The record in `home`; one whose definition cannot be read comes back with
    an empty definition (the caller reports it), so that nothing takes it for a
    deploy that never finished and removes what an operator may repair."""
    path = home / DEFINITION
    try:
        definition = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s", path, exc)
        definition = {}
    if not isinstance(definition, dict):
        log.error("cannot read %s: not a JSON object", path)
        definition = {}
    return FunctionRecord(definition, (home / PAUSED).exists())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data, indent=2))
    tmp.replace(path)
