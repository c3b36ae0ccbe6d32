"""Walking what `yaml.safe_load` built: every node once, and alias loops refused.

YAML aliases let a document share a node (`*x`) or contain itself (`&x [*x]`).
Code that recurses over a loaded document recurses forever on such a loop, and
visits a shared node once per reference (exponentially often in a "billion
laughs" document). `nodes` visits each node once, without recursion, and raises
`AliasLoop` where a node contains itself, so a loader can name that field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["AliasLoop", "nodes"]


class AliasLoop(ValueError):
    """A node that contains itself; `path` is where the loop closes."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path or '(top level)'}: a YAML alias that contains itself")
        self.path = path or "(top level)"


def nodes(document: Any) -> Iterator[tuple[str, Any]]:
    """(field path, value) of every node, depth first; `a.b[0]`, "" for the root."""
    seen: set[int] = set()
    open_: set[int] = set()  # containers on the current path
    stack: list[tuple[str, Any, bool]] = [("", document, False)]
    while stack:
        where, value, closing = stack.pop()
        if closing:
            open_.discard(id(value))
            continue
        if isinstance(value, dict | list):
            if id(value) in open_:
                raise AliasLoop(where)
            if id(value) in seen:
                continue
            seen.add(id(value))
            open_.add(id(value))
            stack.append((where, value, True))
            if isinstance(value, dict):
                children = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
            else:
                children = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            stack.extend((path, child, False) for path, child in reversed(children))
        yield where, value
