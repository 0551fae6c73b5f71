"""``datastore.cfg``: the datastores this installation knows.

::

    datastore: local
        path /srv/backup/local
        sync-level filesystem
        comment main store
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..datastore.chunkstore import SyncLevel
from ..datastore.datastore import Datastore, remove_tree
from ..errors import AlreadyExists, InvalidInput, NotFound
from ..names import safe_id
from .paths import Paths
from .section import Section, SectionConfigFile

FILE_NAME = "datastore.cfg"


@dataclass(frozen=True, slots=True)
class DatastoreConfig:
    name: str
    path: Path
    sync_level: SyncLevel = SyncLevel.FILESYSTEM
    comment: str = ""

    @classmethod
    def from_section(cls, s: Section) -> DatastoreConfig:
        path = s.get("path")
        if not path:
            raise InvalidInput(f"datastore {s.id} has no path", field="path")
        return cls(
            safe_id(s.id, "datastore name"),
            Path(path),
            SyncLevel.parse(s.get("sync-level", "filesystem") or "filesystem"),
            s.get("comment", "") or "",
        )

    def to_section(self) -> Section:
        values: dict[str, str | list[str]] = {"path": str(self.path), "sync-level": self.sync_level.value}
        if self.comment:
            values["comment"] = self.comment
        return Section("datastore", self.name, values)

    def open(self) -> Datastore:
        return Datastore.open(self.path, self.name, self.sync_level)

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "path": str(self.path),
            "sync-level": self.sync_level.value,
            "comment": self.comment,
        }


def config_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(FILE_NAME), frozenset({"datastore"}))


def list_datastores(paths: Paths) -> list[DatastoreConfig]:
    return [DatastoreConfig.from_section(s) for s in config_file(paths).read().sections.values()]


def get_datastore(paths: Paths, name: str) -> DatastoreConfig:
    safe_id(name, "datastore name")
    return DatastoreConfig.from_section(config_file(paths).read().require(name, "datastore"))


def open_datastore(paths: Paths, name: str) -> Datastore:
    return get_datastore(paths, name).open()


def create_datastore(
    paths: Paths, name: str, path: Path, *, sync_level: SyncLevel = SyncLevel.FILESYSTEM, comment: str = ""
) -> DatastoreConfig:
    """Register ``name`` at ``path``; creates the datastore there unless one already exists."""
    safe_id(name, "datastore name")
    cfg = DatastoreConfig(name, path.absolute(), sync_level, comment)
    with config_file(paths).modify() as data:
        if name in data.sections:
            raise AlreadyExists(f"datastore {name!r} already exists")
        try:
            Datastore.open(cfg.path, name, sync_level)
        except NotFound:
            Datastore.create(cfg.path, name, sync_level)
        data.sections[name] = cfg.to_section()
    return cfg


def update_datastore(
    paths: Paths,
    name: str,
    *,
    sync_level: SyncLevel | None = None,
    comment: str | None = None,
    digest: str | None = None,
) -> DatastoreConfig:
    with config_file(paths).modify(digest) as data:
        s = data.require(name, "datastore")
        if sync_level is not None:
            s.values["sync-level"] = sync_level.value
        if comment is not None:
            if comment:
                s.values["comment"] = comment
            else:
                s.values.pop("comment", None)
        return DatastoreConfig.from_section(s)


def remove_datastore(paths: Paths, name: str, *, destroy_data: bool = False) -> DatastoreConfig:
    """Unregister ``name``; delete its folder only with ``destroy_data``."""
    with config_file(paths).modify() as data:
        cfg = DatastoreConfig.from_section(data.require(name, "datastore"))
        del data.sections[name]
    if destroy_data:
        remove_tree(cfg.path, ignore_errors=True)
    return cfg


__all__ = [
    "DatastoreConfig",
    "create_datastore",
    "get_datastore",
    "list_datastores",
    "open_datastore",
    "remove_datastore",
    "update_datastore",
]
