"""Typed keys for values the server keeps on its aiohttp application and requests.

Conventions every route module follows:

* the auth middleware sets ``request[AUTH_ID]`` (an :class:`~asyncsync.names.AuthId`)
  for every authenticated request, and answers 401 itself otherwise;
* ``request.app[ACCESS]`` is the access-control object, ``request.app[PATHS]`` the
  installation's :class:`~asyncsync.config.paths.Paths`;
* handlers raise :class:`~asyncsync.errors.AsyncSyncError` subclasses; the error
  middleware turns them into the JSON error envelope with the error's ``status``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config.paths import Paths
from ..names import AuthId

PATHS: web.AppKey[Paths] = web.AppKey("paths", Paths)
#: the access-control object (asyncsync.access.AccessControl)
ACCESS: web.AppKey[Any] = web.AppKey("access", object)
#: set on each authenticated request: ``request[AUTH_ID]``
AUTH_ID: web.RequestKey[AuthId] = web.RequestKey("asyncsync.auth_id", AuthId)

__all__ = ["ACCESS", "AUTH_ID", "PATHS"]
