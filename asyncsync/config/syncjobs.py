"""``sync.cfg``: what to pull from which remote store into which local store, and how.

::

    sync: pbs2-local
        store local
        remote pbs2
        remote-store local
        schedule Wed 02:30
        group-filter type:ct
        group-filter exclude:regex:^ct/9
        rate-in 20MiB

Keys (all but ``store``, ``remote`` and ``remote-store`` optional):

=================  ===========================================================
``ns``             local namespace anchor (default: root)
``remote-ns``      remote namespace anchor (default: root)
``max-depth``      0..7 levels of sub-namespaces below the anchors; unset = all
``group-filter``   repeatable; ``[include:|exclude:](type:|group:|regex:)...``
``remove-vanished`` remove local snapshots/groups/namespaces gone on the remote
``owner``          owner of newly synced groups (default ``root@pam``)
``schedule``       calendar event (``Wed 02:30``, ``hourly``, ...)
``rate-in``        bytes per second (``20MiB``; text kept as given)
``burst-in``       token-bucket size in bytes (``64MiB``)
``transfer-last``  only the newest N snapshots of each group
``verified-only``  only snapshots whose last verification passed
``group-workers``  groups pulled in parallel (default 2)
``fetch-workers``  chunk requests in flight (default 8)
``max-inflight``   bytes of chunks in flight (default 64MiB, at least 16MiB so
                   that a largest chunk always fits)
=================  ===========================================================

Every change goes through :func:`create_job`, :func:`update_job` or
:func:`remove_job`: each value is checked (the error names the field), cross
references (remote, local datastore) are resolved, the namespace depth limit
is enforced, and nothing is written when anything is wrong.

Locks: a create/update holds ``remote.cfg``'s lock, then ``sync.cfg``'s, so a
remote cannot be removed between "the remote exists" and the write;
:func:`asyncsync.config.remotes.remove_remote` takes them in the same order.

Blocking: file I/O; call from a worker thread on an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..datastore.blob import MAX_CHUNK_SIZE
from ..errors import AlreadyExists, InvalidInput, InvalidName, NotFound
from ..names import MAX_NAMESPACE_DEPTH, ROOT_AUTH_ID, ROOT_NS, AuthId, Namespace, safe_id
from ..sync.defaults import (
    DEFAULT_FETCH_WORKERS,
    DEFAULT_GROUP_WORKERS,
    DEFAULT_MAX_INFLIGHT,
    MAX_FETCH_WORKERS,
    MAX_GROUP_WORKERS,
)
from ..sync.groupfilter import GroupFilter, GroupFilters
from ..units import parse_size
from . import remotes
from .datastores import get_datastore
from .paths import Paths
from .section import Section, SectionConfigFile, Value, check_deletable

FILE_NAME = "sync.cfg"
SECTION_TYPE = "sync"

#: a largest chunk must fit into the in-flight budget, else a pull could never progress
MIN_MAX_INFLIGHT = MAX_CHUNK_SIZE
MAX_MAX_INFLIGHT = 64 * 1024**3

#: keys in the order they are written
KEYS = (
    "store",
    "ns",
    "remote",
    "remote-store",
    "remote-ns",
    "max-depth",
    "group-filter",
    "remove-vanished",
    "owner",
    "schedule",
    "comment",
    "rate-in",
    "burst-in",
    "transfer-last",
    "verified-only",
    "group-workers",
    "fetch-workers",
    "max-inflight",
)
REQUIRED_KEYS = ("store", "remote", "remote-store")
DELETABLE_KEYS = frozenset(KEYS) - frozenset(REQUIRED_KEYS)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# ---- value checks ---------------------------------------------------------------


def parse_bool(value: Any, key: str) -> bool:
    """``0|1|true|false|yes|no|on|off`` (or a JSON bool) to a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise InvalidInput(f"invalid boolean {value!r} (expected 0, 1, true or false)", field=key)


def _parse_int(value: Any, key: str, lo: int, hi: int | None) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"invalid integer {value!r}", field=key)
    try:
        n = int(value.strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid integer {value!r}", field=key) from None
    if isinstance(value, float) and value != n:
        raise InvalidInput(f"invalid integer {value!r}", field=key)
    if n < lo:
        raise InvalidInput(
            f"must not be negative: {n}" if n < 0 and lo >= 0 else f"must be at least {lo}: {n}",
            field=key,
        )
    if hi is not None and n > hi:
        raise InvalidInput(f"must be at most {hi}: {n}", field=key)
    return n


def _parse_size(value: Any, key: str, lo: int = 0, hi: int | None = None) -> tuple[str, int]:
    """(stored text, bytes) of a size/rate; the text is kept as the user wrote it."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid size {value!r}", field=key)
    text = str(value).strip() if isinstance(value, int | str) else None
    if text is None:
        raise InvalidInput(f"invalid size {value!r}", field=key)
    if text.startswith("-"):
        raise InvalidInput(f"must not be negative: {text}", field=key)
    n = parse_size(text, field=key)
    if n < lo:
        raise InvalidInput(f"must be at least {lo} bytes: {text}", field=key)
    if hi is not None and n > hi:
        raise InvalidInput(f"must be at most {hi} bytes: {text}", field=key)
    return text, n


def _safe(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid value {value!r}", field=key)
    try:
        return safe_id(value.strip(), key)
    except InvalidName as exc:
        raise InvalidInput(str(exc), field=key) from None


def _ns(value: Any, key: str) -> Namespace:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid namespace {value!r}", field=key)
    try:
        return Namespace.parse(value.strip())
    except InvalidName as exc:
        raise InvalidInput(str(exc), field=key) from None


def _group_filters(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise InvalidInput(f"invalid group filter {value!r}", field="group-filter")
    out = []
    for text in items:
        GroupFilter.parse(text.strip())  # raises InvalidInput(field="group-filter")
        out.append(text.strip())
    return out


def check_schedule(value: Any) -> str:
    """Check a calendar event (``Wed 02:30``); returns the text as given (stripped)."""
    from ..jobs.calendar import CalendarEvent  # the pure parser; imported late to keep layers light

    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"invalid schedule {value!r}", field="schedule")
    text = value.strip()
    try:
        CalendarEvent.parse(text)
    except InvalidInput as exc:
        if exc.field == "schedule":
            raise
        raise InvalidInput(exc.message, field="schedule") from None
    return text


def _one_line(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid value {value!r}", field=key)
    if "\n" in value or "\r" in value:
        raise InvalidInput("must not contain a line break", field=key)
    return value.strip()


def _normalize(key: str, value: Any) -> Value:
    """The stored text of ``key`` (validated); raises :class:`InvalidInput` naming the key."""
    if key in ("store", "remote", "remote-store"):
        return _safe(value, key)
    if key in ("ns", "remote-ns"):
        return str(_ns(value, key))
    if key == "max-depth":
        return str(_parse_int(value, key, 0, MAX_NAMESPACE_DEPTH))
    if key == "group-filter":
        return _group_filters(value)
    if key in ("remove-vanished", "verified-only"):
        return "true" if parse_bool(value, key) else "false"
    if key == "owner":
        if not isinstance(value, str):
            raise InvalidInput(f"invalid auth-id {value!r}", field=key)
        try:
            return str(AuthId.parse(value.strip()))
        except InvalidName as exc:
            raise InvalidInput(str(exc), field=key) from None
    if key == "schedule":
        return check_schedule(value)
    if key == "comment":
        return _one_line(value, key)
    if key in ("rate-in", "burst-in"):
        # 0 would stall the job forever: a limit is at least one byte per second
        return _parse_size(value, key, lo=1)[0]
    if key == "transfer-last":
        return str(_parse_int(value, key, 1, None))
    if key == "group-workers":
        return str(_parse_int(value, key, 1, MAX_GROUP_WORKERS))
    if key == "fetch-workers":
        return str(_parse_int(value, key, 1, MAX_FETCH_WORKERS))
    if key == "max-inflight":
        return _parse_size(value, key, MIN_MAX_INFLIGHT, MAX_MAX_INFLIGHT)[0]
    raise InvalidInput(f"unknown sync job property {key!r}", field=key)


# ---- typed view -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncJobConfig:
    """One sync job with parsed values: what the pull engine and the scheduler consume.

    ``values`` keeps the stored text of every key that is set (``rate-in`` as
    ``20MiB``), for display.
    """

    id: str
    store: str
    remote: str
    remote_store: str
    ns: Namespace = ROOT_NS
    remote_ns: Namespace = ROOT_NS
    max_depth: int | None = None
    group_filter: GroupFilters = field(default_factory=GroupFilters)
    remove_vanished: bool = False
    owner: AuthId = ROOT_AUTH_ID
    schedule: str | None = None
    comment: str = ""
    rate_in: int | None = None
    burst_in: int | None = None
    transfer_last: int | None = None
    verified_only: bool = False
    group_workers: int = DEFAULT_GROUP_WORKERS
    fetch_workers: int = DEFAULT_FETCH_WORKERS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    values: Mapping[str, Value] = field(default_factory=dict, compare=False)

    @classmethod
    def from_section(cls, s: Section) -> SyncJobConfig:
        """Parse and check a section (also the cross-value depth rule); raises :class:`InvalidInput`."""
        for key in s.values:
            if key not in KEYS:
                raise InvalidInput(f"unknown sync job property {key!r} in job {s.id}", field=key)
        for key in REQUIRED_KEYS:
            if not s.get(key):
                raise InvalidInput(f"is required (job {s.id})", field=key)
        v: dict[str, Value] = {k: _normalize(k, s.values[k]) for k in KEYS if k in s.values}

        def text(key: str) -> str | None:
            x = v.get(key)
            assert x is None or isinstance(x, str)
            return x

        def size(key: str) -> int | None:
            t = text(key)
            return parse_size(t, field=key) if t is not None else None

        def num(key: str) -> int | None:
            t = text(key)
            return int(t) if t is not None else None

        ns = Namespace.parse(text("ns"))
        remote_ns = Namespace.parse(text("remote-ns"))
        max_depth = num("max-depth")
        if max_depth is not None:
            # the deepest namespace the job could create or read must stay within 7 levels
            for key, anchor in (("ns", ns), ("remote-ns", remote_ns)):
                if anchor.depth + max_depth > MAX_NAMESPACE_DEPTH:
                    raise InvalidInput(
                        f"{key} {str(anchor)!r} ({anchor.depth} levels) plus max-depth {max_depth} "
                        f"exceeds {MAX_NAMESPACE_DEPTH} levels",
                        field="max-depth",
                    )
        if v.get("burst-in") is not None and v.get("rate-in") is None:
            raise InvalidInput("needs rate-in (the bucket size of a rate limit)", field="burst-in")
        owner = text("owner")
        gf = v.get("group-filter")
        return cls(
            id=safe_id(s.id, "sync job id"),
            store=text("store") or "",
            remote=text("remote") or "",
            remote_store=text("remote-store") or "",
            ns=ns,
            remote_ns=remote_ns,
            max_depth=max_depth,
            group_filter=GroupFilters.parse(gf if isinstance(gf, list) else []),
            remove_vanished=text("remove-vanished") == "true",
            owner=AuthId.parse(owner) if owner else ROOT_AUTH_ID,
            schedule=text("schedule"),
            comment=text("comment") or "",
            rate_in=size("rate-in"),
            burst_in=size("burst-in"),
            transfer_last=num("transfer-last"),
            verified_only=text("verified-only") == "true",
            group_workers=num("group-workers") or DEFAULT_GROUP_WORKERS,
            fetch_workers=num("fetch-workers") or DEFAULT_FETCH_WORKERS,
            max_inflight=size("max-inflight") or DEFAULT_MAX_INFLIGHT,
            values=v,
        )

    def to_section(self) -> Section:
        return Section(SECTION_TYPE, self.id, {k: self.values[k] for k in KEYS if k in self.values})

    def to_json(self) -> dict[str, Any]:
        """The keys that are set, typed as JSON (bools, ints, lists; sizes as their text)."""
        out: dict[str, Any] = {"id": self.id}
        for key, value in self.values.items():
            if key in ("remove-vanished", "verified-only"):
                out[key] = value == "true"
            elif key in ("max-depth", "transfer-last", "group-workers", "fetch-workers"):
                assert isinstance(value, str)
                out[key] = int(value)
            elif key == "group-filter":
                out[key] = list(value)
            else:
                out[key] = value
        return out

    @property
    def datastore_acl_path(self) -> str:
        """``/datastore/{store}[/{ns...}]``: where the local privileges are checked."""
        return "/".join(("", "datastore", self.store, *self.ns.parts))

    @property
    def remote_acl_path(self) -> str:
        """``/remote/{remote}/{remote-store}``: where Remote.Read is checked."""
        return f"/remote/{self.remote}/{self.remote_store}"


def next_run(job: SyncJobConfig, after: datetime) -> datetime | None:
    """The first time the job's schedule fires strictly after ``after`` (aware), or None
    (no schedule, or one that never fires again)."""
    if not job.schedule:
        return None
    from ..jobs.calendar import CalendarEvent

    return CalendarEvent.parse(job.schedule).next_after(after)


# ---- files ----------------------------------------------------------------------


def config_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(FILE_NAME), frozenset({SECTION_TYPE}))


def list_jobs_with_digest(paths: Paths) -> tuple[list[SyncJobConfig], str]:
    """All jobs (sorted by id) and the digest of ``sync.cfg``."""
    data = config_file(paths).read()
    jobs = [SyncJobConfig.from_section(s) for s in data.sections.values()]
    return sorted(jobs, key=lambda j: j.id), data.digest


def list_jobs(paths: Paths) -> list[SyncJobConfig]:
    return list_jobs_with_digest(paths)[0]


def get_job_with_digest(paths: Paths, id: str) -> tuple[SyncJobConfig, str]:
    _safe(id, "id")
    data = config_file(paths).read()
    return SyncJobConfig.from_section(data.require(id, "sync job")), data.digest


def get_job(paths: Paths, id: str) -> SyncJobConfig:
    """The job ``id``; :class:`NotFound` if it is not configured."""
    return get_job_with_digest(paths, id)[0]


def jobs_using_remote(paths: Paths, remote: str) -> list[str]:
    """Ids of the jobs that pull from ``remote`` (read without parsing every value)."""
    data = config_file(paths).read()
    return sorted(s.id for s in data.sections.values() if s.get("remote") == remote)


# ---- changing -------------------------------------------------------------------

#: called inside the locks with (old job or None, new job or None) before anything is
#: written; raising aborts the change (the API's permission check)
Authorize = Callable[[SyncJobConfig | None, SyncJobConfig | None], None]


def _normalize_all(values: Mapping[str, Any]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key, value in values.items():
        if key not in KEYS:
            raise InvalidInput(f"unknown sync job property {key!r}", field=key)
        if value is None:
            continue
        out[key] = _normalize(key, value)
    return out


def _check_references(paths: Paths, changed: Mapping[str, Value], job: SyncJobConfig) -> None:
    """The remote and local datastore named by changed keys must exist."""
    if "remote" in changed and not remotes.remote_exists(paths, job.remote):
        raise InvalidInput(f"unknown remote {job.remote!r}", field="remote")
    if "store" in changed:
        try:
            get_datastore(paths, job.store)
        except NotFound:
            raise InvalidInput(f"unknown local datastore {job.store!r}", field="store") from None


def create_job(
    paths: Paths,
    id: str,
    values: Mapping[str, Any],
    *,
    authorize: Authorize | None = None,
    on_exists: Callable[[SyncJobConfig], None] | None = None,
) -> SyncJobConfig:
    """Add sync job ``id``. ``values`` uses the file's keys (``remote-store``, ...); values may
    be text (as from the CLI) or JSON types. Raises :class:`InvalidInput` naming the field,
    :class:`AlreadyExists`.

    Order of the checks (each one only once the previous passed), so that nothing about
    other jobs, remotes or datastores leaks to a caller that ``authorize`` refuses:

    1. the values themselves (no file is read);
    2. under the locks, ``authorize(None, job)`` on the *new* job: its answer cannot
       depend on whether ``id`` is taken;
    3. the id: if it is taken, ``on_exists(existing job)`` may raise its own error (the API
       answers a job hidden from the caller as it answers a read of it), else
       :class:`AlreadyExists`;
    4. the references (the remote and the local datastore must exist).
    """
    _safe(id, "id")
    stored = _normalize_all(values)
    if isinstance(stored.get("group-filter"), list) and not stored["group-filter"]:
        del stored["group-filter"]
    if stored.get("comment") == "":
        del stored["comment"]
    job = SyncJobConfig.from_section(Section(SECTION_TYPE, id, stored))
    with remotes.config_file(paths).lock(), config_file(paths).modify() as data:
        if authorize is not None:
            authorize(None, job)
        existing = data.get(id)
        if existing is not None:
            if on_exists is not None:
                on_exists(SyncJobConfig.from_section(existing))
            raise AlreadyExists(f"sync job {id!r} already exists")
        _check_references(paths, stored, job)
        data.sections[id] = job.to_section()
    return job


def update_job(
    paths: Paths,
    id: str,
    values: Mapping[str, Any],
    *,
    delete: Iterable[str] = (),
    digest: str | None = None,
    authorize: Authorize | None = None,
) -> SyncJobConfig:
    """Change job ``id``: clear the keys in ``delete``, then set ``values``.

    A ``group-filter`` value (one or a list) replaces the whole list; an empty list clears it.
    ``digest`` (if given) must be the current digest of ``sync.cfg``, else :class:`Conflict`.
    Nothing is written if anything is invalid.
    """
    _safe(id, "id")
    to_delete = check_deletable(delete, [k for k in KEYS if k in DELETABLE_KEYS])
    changes = _normalize_all(values)
    with remotes.config_file(paths).lock(), config_file(paths).modify(digest) as data:
        old = SyncJobConfig.from_section(data.require(id, "sync job"))
        merged: dict[str, Value] = dict(old.values)
        for key in to_delete:
            merged.pop(key, None)
        merged.update(changes)
        if merged.get("group-filter") == []:
            del merged["group-filter"]
        if merged.get("comment") == "":
            del merged["comment"]
        job = SyncJobConfig.from_section(Section(SECTION_TYPE, id, merged))
        _check_references(paths, changes, job)
        if authorize is not None:
            authorize(old, job)
        data.sections[id] = job.to_section()
    return job


def remove_job(
    paths: Paths,
    id: str,
    *,
    digest: str | None = None,
    authorize: Authorize | None = None,
) -> SyncJobConfig:
    """Remove job ``id`` (its state and logs are the scheduler's business)."""
    _safe(id, "id")
    with config_file(paths).modify(digest) as data:
        old = SyncJobConfig.from_section(data.require(id, "sync job"))
        if authorize is not None:
            authorize(old, None)
        del data.sections[id]
    return old


__all__ = [
    "DEFAULT_FETCH_WORKERS",
    "DEFAULT_GROUP_WORKERS",
    "DEFAULT_MAX_INFLIGHT",
    "DELETABLE_KEYS",
    "FILE_NAME",
    "KEYS",
    "Authorize",
    "SyncJobConfig",
    "check_schedule",
    "create_job",
    "get_job",
    "get_job_with_digest",
    "jobs_using_remote",
    "list_jobs",
    "list_jobs_with_digest",
    "next_run",
    "parse_bool",
    "remove_job",
    "update_job",
]
