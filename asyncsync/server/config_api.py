"""Configuration API: remotes and sync jobs.

==========================================  =========================================================
``GET    /config/remote``                   remotes the caller may audit (Remote.Audit on /remote/{name})
``POST   /config/remote``                   create (Remote.Modify on /remote)
``GET    /config/remote/{name}``            one remote + ``digest`` (Remote.Audit on /remote/{name})
``PUT    /config/remote/{name}``            update (Remote.Modify on /remote/{name})
``DELETE /config/remote/{name}``            remove (Remote.Modify on /remote/{name})
``GET    /config/sync``                     jobs the caller may see (see :func:`can_read_job`)
``POST   /config/sync``                     create (see :func:`check_modify_job`; a taken id: below)
``GET    /config/sync/{id}``                one job + ``digest``
``PUT    /config/sync/{id}``                update (modify access to the old and the new job)
``DELETE /config/sync/{id}``                remove (modify access to the job)
==========================================  =========================================================

Existence is not leaked: a remote's route checks the privilege on ``/remote/{name}``
before looking the remote up, so a caller without it gets 403 whether or not the
remote exists. A sync job's ACL paths come from the job itself, so an unknown job id
answers 404 only to a caller who may audit *every* job (Datastore.Audit on
``/datastore`` and Remote.Audit on ``/remote``); anyone else gets the same 403, with
the same message, as for an existing job it may not see (:func:`_job_or_deny`).

``POST /config/sync`` checks the caller's right to set up the *new* job before it looks
at the id, so a caller without it gets the same 403 whether or not the id is taken. A
caller with it who picks a taken id gets 409 if it may see the existing job (read it, or
set it up: it could find it through ``GET``/``PUT``/``DELETE`` anyway), else exactly the
403 that ``GET /config/sync/{id}`` gives it for that id. (That a taken id cannot be
created again is unavoidable; nothing else about the hidden job is told.)

Bodies are JSON objects (or form fields) using the config keys (``remote-store``,
``auth-id`` — ``userid`` is accepted as its older name); ``PUT`` also takes
``delete`` (a list, or a comma-separated string) and ``digest`` (refused with
409 if the file changed since); ``DELETE`` takes ``digest`` as a query parameter.
List answers carry the file's digest beside ``data``. Secrets are never returned.

The privilege rules follow Proxmox Backup Server; the create/update/remove logic
lives in :mod:`asyncsync.config.remotes` and :mod:`asyncsync.config.syncjobs`,
which call back into the permission check while they hold the file lock, so the
check sees exactly the configuration that is written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .. import protocol
from ..access import AccessControl
from ..access.privileges import Privilege, datastore_acl_path, remote_acl_path
from ..config import remotes, syncjobs
from ..config.paths import Paths
from ..config.remotes import RemoteConfig
from ..config.syncjobs import SyncJobConfig
from ..errors import InvalidInput, NotFound, PermissionDenied
from ..jobs.state import SYNC_JOB_TYPE, forget_job
from ..names import AuthId
from .common import get_access, get_auth_id, ok, read_json
from .keys import PATHS

P = Privilege

REMOTES = protocol.API_PREFIX + "/config/remote"
SYNC_JOBS = protocol.API_PREFIX + "/config/sync"


# ---- permission rules (pure: they only ask the access-control object) -------------


def can_read_job(access: AccessControl, auth_id: AuthId, job: SyncJobConfig) -> bool:
    """Datastore.Audit on the local anchor and Remote.Audit on the remote.

    Proxmox requires both: a job names the local store and the remote, and
    either alone must not reveal the other side.
    """
    return access.has(auth_id, datastore_acl_path(job.store, job.ns), P.DATASTORE_AUDIT) and access.has(
        auth_id, remote_acl_path(job.remote), P.REMOTE_AUDIT
    )


def can_audit_all_jobs(access: AccessControl, auth_id: AuthId) -> bool:
    """True if ``auth_id`` may read any sync job that could exist, so a 404 tells it nothing new."""
    return access.has(auth_id, "/datastore", P.DATASTORE_AUDIT) and access.has(
        auth_id, "/remote", P.REMOTE_AUDIT
    )


def _denied(id: str) -> PermissionDenied:
    """The one answer for an unknown or an unreadable job: callers must not tell them apart."""
    return PermissionDenied(f"permission denied for sync job {id!r}")


def owns(auth_id: AuthId, owner: AuthId) -> bool:
    """True if groups owned by ``owner`` are the caller's own (itself, or a token of the calling user)."""
    if owner == auth_id:
        return True
    return owner.is_token and not auth_id.is_token and owner.userid == auth_id


def check_modify_job(access: AccessControl, auth_id: AuthId, job: SyncJobConfig) -> None:
    """Raise :class:`PermissionDenied` unless ``auth_id`` may set up ``job``:

    * Datastore.Backup on ``/datastore/{store}[/{ns}]``;
    * Datastore.Prune there too if ``remove-vanished`` is set;
    * Datastore.Modify there too if the owner (default root@pam) is not the caller
      (it would let the caller create groups owned by someone else);
    * Remote.Read on ``/remote/{remote}/{remote-store}``.
    """
    ds_path = datastore_acl_path(job.store, job.ns)
    access.check(auth_id, ds_path, P.DATASTORE_BACKUP)
    if job.remove_vanished:
        access.check(auth_id, ds_path, P.DATASTORE_PRUNE)
    if not owns(auth_id, job.owner):
        access.check(auth_id, ds_path, P.DATASTORE_MODIFY)
    access.check(auth_id, remote_acl_path(job.remote, job.remote_store), P.REMOTE_READ)


def _may_modify(access: AccessControl, auth_id: AuthId, job: SyncJobConfig) -> bool:
    try:
        check_modify_job(access, auth_id, job)
    except PermissionDenied:
        return False
    return True


def _may_see(access: AccessControl, auth_id: AuthId, job: SyncJobConfig, *, modify: bool) -> bool:
    """May the caller learn that ``job`` exists: it may read it, or (``modify``) change it.

    (A Datastore.Backup user may manage its own jobs without Datastore.Audit.)
    """
    return can_read_job(access, auth_id, job) or (modify and _may_modify(access, auth_id, job))


def _job_or_deny(
    paths: Paths, access: AccessControl, auth_id: AuthId, id: str, *, modify: bool = False
) -> tuple[SyncJobConfig, str]:
    """Job ``id`` and the file digest, for a caller that may see it (:func:`_may_see`).

    Unknown id: :class:`NotFound` if the caller may audit every job, else the same
    :class:`PermissionDenied` an existing job it may not see gets.
    """
    try:
        job, digest = syncjobs.get_job_with_digest(paths, id)
    except NotFound:
        if can_audit_all_jobs(access, auth_id):
            raise
        raise _denied(id) from None
    if not _may_see(access, auth_id, job, modify=modify):
        raise _denied(id)
    return job, digest


def _check_modify_old(access: AccessControl, auth_id: AuthId, job: SyncJobConfig) -> None:
    """:func:`check_modify_job` on an existing job. Its detailed denial names the job's store
    and remote, so only a caller that may read the job gets it; others get the generic one."""
    if not _may_see(access, auth_id, job, modify=True):
        raise _denied(job.id)
    check_modify_job(access, auth_id, job)


# ---- body helpers ----------------------------------------------------------------


def _pop_str(body: dict[str, Any], key: str) -> str | None:
    value = body.pop(key, None)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=key)
    return value


def _pop_delete(body: dict[str, Any]) -> list[str]:
    value = body.pop("delete", None)
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidInput("must be a list of property names", field="delete")


def _remote_body(body: dict[str, Any]) -> dict[str, Any]:
    if "userid" in body:
        userid = body.pop("userid")
        if "auth-id" in body and body["auth-id"] != userid:
            raise InvalidInput("give auth-id or userid, not both", field="auth-id")
        body["auth-id"] = userid
    return body


def _caller(request: web.Request) -> tuple[AuthId, AccessControl, Paths]:
    """What every handler here starts from: the caller, the access-control object, the paths."""
    return get_auth_id(request), get_access(request), request.app[PATHS]


def _digest_query(request: web.Request) -> str | None:
    return request.query.get("digest") or None


# ---- remotes ---------------------------------------------------------------------


async def list_remotes(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)

    def run() -> tuple[list[dict[str, Any]], str]:
        items, digest = remotes.list_remotes(paths)
        visible = [r for r in items if access.has(auth_id, remote_acl_path(r.name), P.REMOTE_AUDIT)]
        return [r.to_json() for r in visible], digest

    data, digest = await asyncio.to_thread(run)
    return web.json_response({"data": data, "digest": digest})


async def create_remote(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    body = _remote_body(await read_json(request))
    name = _pop_str(body, "name")
    if name is None:
        raise InvalidInput("is required", field="name")

    def run() -> RemoteConfig:
        access.check(auth_id, "/remote", P.REMOTE_MODIFY)
        return remotes.create_remote(paths, name, body)

    r = await asyncio.to_thread(run)
    return ok(r.to_json())


async def get_remote(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    name = request.match_info["name"]

    def run() -> dict[str, Any]:
        # the privilege first: a caller without it learns nothing, not even whether it exists
        access.check(auth_id, remote_acl_path(name), P.REMOTE_AUDIT)
        r, digest = remotes.get_remote_with_digest(paths, name)
        return {**r.to_json(), "digest": digest}

    return ok(await asyncio.to_thread(run))


async def update_remote(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    name = request.match_info["name"]
    body = _remote_body(await read_json(request))
    digest = _pop_str(body, "digest")
    delete = _pop_delete(body)
    if body.get("name") == name:
        del body["name"]

    def run() -> RemoteConfig:
        access.check(auth_id, remote_acl_path(name), P.REMOTE_MODIFY)
        return remotes.update_remote(paths, name, body, delete=delete, digest=digest)

    r = await asyncio.to_thread(run)
    return ok(r.to_json())


async def delete_remote(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    name = request.match_info["name"]
    digest = _digest_query(request)

    def run() -> None:
        access.check(auth_id, remote_acl_path(name), P.REMOTE_MODIFY)
        remotes.remove_remote(paths, name, digest=digest)

    await asyncio.to_thread(run)
    return ok(None)


# ---- sync jobs -------------------------------------------------------------------


async def list_sync_jobs(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)

    def run() -> tuple[list[dict[str, Any]], str]:
        jobs, digest = syncjobs.list_jobs_with_digest(paths)
        return [j.to_json() for j in jobs if can_read_job(access, auth_id, j)], digest

    data, digest = await asyncio.to_thread(run)
    return web.json_response({"data": data, "digest": digest})


async def create_sync_job(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    body = await read_json(request)
    id = _pop_str(body, "id")
    if id is None:
        raise InvalidInput("is required", field="id")

    def authorize(old: SyncJobConfig | None, new: SyncJobConfig | None) -> None:
        # the rights for the NEW job come first (create_job runs this before it looks at the
        # id), so a caller who may not set this job up gets the same 403 whether or not the
        # id is taken
        assert new is not None
        check_modify_job(access, auth_id, new)

    def on_exists(existing: SyncJobConfig) -> None:
        # ids share one namespace, so a taken id must fail even for a caller who cannot see
        # the job; that caller gets the very answer GET/PUT/DELETE /config/sync/{id} give it
        # (the generic 403), so a create tells it nothing that a read does not
        if not _may_see(access, auth_id, existing, modify=True):
            raise _denied(id)

    job = await asyncio.to_thread(
        syncjobs.create_job, paths, id, body, authorize=authorize, on_exists=on_exists
    )
    return ok(job.to_json())


async def get_sync_job(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    id = request.match_info["id"]

    def run() -> dict[str, Any]:
        job, digest = _job_or_deny(paths, access, auth_id, id)
        return {**job.to_json(), "digest": digest}

    return ok(await asyncio.to_thread(run))


async def update_sync_job(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    id = request.match_info["id"]
    body = await read_json(request)
    digest = _pop_str(body, "digest")
    delete = _pop_delete(body)
    if body.get("id") == id:
        del body["id"]

    def authorize(old: SyncJobConfig | None, new: SyncJobConfig | None) -> None:
        # both sides: the caller must not be able to take over (or retarget) a job that
        # pulls into a store it could not set up a job for
        if old is not None:
            _check_modify_old(access, auth_id, old)
        if new is not None:
            check_modify_job(access, auth_id, new)

    def run() -> SyncJobConfig:
        # existence and rights first, so an unknown or unreadable job answers the same
        # 403 before the body is checked against the configuration (which could answer 400);
        # ``authorize`` repeats the check under the file lock on what is really written
        _check_modify_old(access, auth_id, _job_or_deny(paths, access, auth_id, id, modify=True)[0])
        return syncjobs.update_job(paths, id, body, delete=delete, digest=digest, authorize=authorize)

    job = await asyncio.to_thread(run)
    return ok(job.to_json())


async def delete_sync_job(request: web.Request) -> web.Response:
    auth_id, access, paths = _caller(request)
    id = request.match_info["id"]
    digest = _digest_query(request)

    def authorize(old: SyncJobConfig | None, new: SyncJobConfig | None) -> None:
        assert old is not None
        _check_modify_old(access, auth_id, old)

    def run() -> None:
        _check_modify_old(access, auth_id, _job_or_deny(paths, access, auth_id, id, modify=True)[0])
        syncjobs.remove_job(paths, id, digest=digest, authorize=authorize)
        forget_job(paths, SYNC_JOB_TYPE, id)

    await asyncio.to_thread(run)
    return ok(None)


def setup(app: web.Application) -> None:
    """Register the configuration routes on ``app``."""
    app.router.add_get(REMOTES, list_remotes)
    app.router.add_post(REMOTES, create_remote)
    app.router.add_get(REMOTES + "/{name}", get_remote)
    app.router.add_put(REMOTES + "/{name}", update_remote)
    app.router.add_delete(REMOTES + "/{name}", delete_remote)
    app.router.add_get(SYNC_JOBS, list_sync_jobs)
    app.router.add_post(SYNC_JOBS, create_sync_job)
    app.router.add_get(SYNC_JOBS + "/{id}", get_sync_job)
    app.router.add_put(SYNC_JOBS + "/{id}", update_sync_job)
    app.router.add_delete(SYNC_JOBS + "/{id}", delete_sync_job)


__all__ = ["can_audit_all_jobs", "can_read_job", "check_modify_job", "owns", "setup"]
