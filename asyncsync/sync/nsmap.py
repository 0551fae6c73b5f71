"""Namespace mapping: the remote tree under ``remote-ns`` lands under the local ``ns``.

``max_depth`` counts levels below the anchor: 0 = the anchor alone, 1 = the
anchor and its children, ``None`` = everything. A remote namespace
``remote_ns/x/y`` maps to ``ns/x/y``.

Depth limit: a namespace path has at most 7 components. Proxmox refuses a job
whose *possible* depth (local anchor depth + max-depth, with an unset max-depth
counting as ``7 - remote anchor depth``) exceeds 7, even when the remote holds
nothing that deep. We refuse the same static combinations when ``max_depth``
is given, but with ``max_depth`` unset we check the namespaces the remote
actually has: pulling a shallow remote tree into a sub-namespace then just
works, and a tree that really would not fit is still refused before any byte
is transferred, naming the namespace that does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidInput
from ..names import MAX_NAMESPACE_DEPTH, Namespace


@dataclass(frozen=True, slots=True)
class NamespaceMap:
    """Maps remote namespaces under ``remote_anchor`` to local ones under ``local_anchor``."""

    remote_anchor: Namespace
    local_anchor: Namespace
    max_depth: int | None = None

    def __post_init__(self) -> None:
        if self.max_depth is not None:
            if not 0 <= self.max_depth <= MAX_NAMESPACE_DEPTH:
                raise InvalidInput(f"must be between 0 and {MAX_NAMESPACE_DEPTH}", field="max-depth")
            if self.local_anchor.depth + self.max_depth > MAX_NAMESPACE_DEPTH:
                raise InvalidInput(
                    f"namespace {self.local_anchor!s} (depth {self.local_anchor.depth}) with max-depth "
                    f"{self.max_depth} would exceed {MAX_NAMESPACE_DEPTH} namespace levels",
                    field="max-depth",
                )
            if self.remote_anchor.depth + self.max_depth > MAX_NAMESPACE_DEPTH:
                raise InvalidInput(
                    f"remote namespace {self.remote_anchor!s} with max-depth {self.max_depth} "
                    f"would exceed {MAX_NAMESPACE_DEPTH} namespace levels",
                    field="max-depth",
                )

    def in_scope(self, remote: Namespace) -> bool:
        """True if ``remote`` is the anchor or below it, within ``max_depth``."""
        if not remote.is_within(self.remote_anchor):
            return False
        rel = remote.depth - self.remote_anchor.depth
        return self.max_depth is None or rel <= self.max_depth

    def local_in_scope(self, local: Namespace) -> bool:
        """True if a local namespace lies in the job's target tree (for remove-vanished)."""
        if not local.is_within(self.local_anchor):
            return False
        rel = local.depth - self.local_anchor.depth
        return self.max_depth is None or rel <= self.max_depth

    def map(self, remote: Namespace) -> Namespace:
        """The local namespace for ``remote``; :class:`InvalidInput` if out of scope or too deep."""
        if not self.in_scope(remote):
            raise InvalidInput(f"remote namespace {remote!s} is outside the job's scope", field="remote-ns")
        rel = remote.parts[self.remote_anchor.depth :]
        if self.local_anchor.depth + len(rel) > MAX_NAMESPACE_DEPTH:
            raise InvalidInput(
                f"remote namespace {remote!s} mapped under {self.local_anchor!s} would exceed "
                f"{MAX_NAMESPACE_DEPTH} namespace levels",
                field="ns",
            )
        return Namespace(self.local_anchor.parts + rel)

    def map_all(self, remotes: Iterable[Namespace]) -> list[tuple[Namespace, Namespace]]:
        """(remote, local) pairs for the in-scope namespaces, sorted; raises before returning
        anything if one of them would not fit, so nothing is transferred for a bad job."""
        pairs = [(r, self.map(r)) for r in sorted(set(remotes)) if self.in_scope(r)]
        return pairs


__all__ = ["NamespaceMap"]
