"""Group filters, as Proxmox sync jobs know them.

A filter is ``[include:|exclude:](type:TYPE|group:TYPE/ID|regex:REGEX)``; the
regex is matched (``re.search``) against the full group id ``type/id``.

Rules for a list of filters: none = every group; includes only = groups
matching any include; excludes only = all but those matching any exclude;
both = matching an include and no exclude.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidInput, InvalidName
from ..names import BackupType, GroupId


@dataclass(frozen=True, slots=True)
class GroupFilter:
    """One filter: ``kind`` is ``type``, ``group`` or ``regex``."""

    kind: str
    value: str
    exclude: bool = False

    @classmethod
    def parse(cls, text: str) -> GroupFilter:
        exclude = False
        rest = text
        if rest.startswith("exclude:"):
            exclude, rest = True, rest[len("exclude:") :]
        elif rest.startswith("include:"):
            rest = rest[len("include:") :]
        kind, sep, value = rest.partition(":")
        if not sep or not value:
            raise InvalidInput(
                f"invalid group filter {text!r} (expected [include:|exclude:]type:T, group:T/ID or regex:RE)",
                field="group-filter",
            )
        try:
            if kind == "type":
                BackupType.parse(value)
            elif kind == "group":
                GroupId.parse(value)
            elif kind == "regex":
                re.compile(value)
            else:
                raise InvalidInput(f"unknown group filter kind {kind!r} in {text!r}", field="group-filter")
        except InvalidName as exc:
            raise InvalidInput(f"{exc} in {text!r}", field="group-filter") from None
        except re.error as exc:
            raise InvalidInput(f"bad regex in {text!r}: {exc}", field="group-filter") from None
        return cls(kind, value, exclude)

    def matches(self, group: GroupId) -> bool:
        if self.kind == "type":
            return group.type.value == self.value
        if self.kind == "group":
            return str(group) == self.value
        return re.search(self.value, str(group)) is not None

    def __str__(self) -> str:
        return ("exclude:" if self.exclude else "") + f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class GroupFilters:
    """A list of filters with the include/exclude combination rules."""

    filters: tuple[GroupFilter, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> GroupFilters:
        return cls(tuple(GroupFilter.parse(t) for t in texts))

    def matches(self, group: GroupId) -> bool:
        includes = [f for f in self.filters if not f.exclude]
        excludes = [f for f in self.filters if f.exclude]
        if includes and not any(f.matches(group) for f in includes):
            return False
        return not any(f.matches(group) for f in excludes)

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __str__(self) -> str:
        return ", ".join(str(f) for f in self.filters)


__all__ = ["GroupFilter", "GroupFilters"]
