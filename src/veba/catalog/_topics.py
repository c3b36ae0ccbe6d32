"""Topics checked against the catalogue: a name no event type answers to is most
likely a typo, and the function would silently never get an event of it.

Only a warning: an EventEx / ExtendedEvent id may exist only on the user's own
vCenter, which the catalogue knows of only while connected to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

from veba.routing import topic_items
from veba.shapes import V08_TYPE_PREFIX, V08_TYPE_SUFFIX

__all__ = ["unknown_topics"]


def unknown_topics(topic: str, known: Collection[str]) -> list[str]:
    """One message per name in `topic` (as a `topic` annotation lists them) that
    names no type in `known`, with the nearest known type when there is one."""
    messages = []
    for name, subjects in topic_items(topic):
        if name == "*" or any(subject in known for subject in subjects):
            continue
        # A legacy dotted topic (vm.powerd.on) is compared as the class it stands for.
        hint = _nearest(name, known) or next(
            filter(None, (_nearest(s, known) for s in sorted(subjects - {name}))), None
        )
        message = f"{name!r} is not a known event type"
        if hint:
            message += f"; did you mean {hint!r}?"
        elif "." in name:
            message += " (fine if it is an EventEx id your vCenter sends)"
        else:
            message += ": the function will get no event for it"
        messages.append(message)
    return messages


def _nearest(name: str, known: Collection[str]) -> str | None:
    v08 = name.startswith(V08_TYPE_PREFIX) and name.endswith(V08_TYPE_SUFFIX)
    bare = name[len(V08_TYPE_PREFIX) : -len(V08_TYPE_SUFFIX)] if v08 else name
    folded = [k for k in known if k.casefold() == bare.casefold()]
    close = folded or difflib.get_close_matches(bare, list(known), n=1, cutoff=0.8)
    if not close:
        return None
    return f"{V08_TYPE_PREFIX}{close[0]}{V08_TYPE_SUFFIX}" if v08 else close[0]
