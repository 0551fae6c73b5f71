"""Users, API tokens, ACLs, login tickets: who may log in and what they may do.

The public face of the access layer; the modules behind it are private:

* :mod:`.privileges` -- :class:`Privilege`, :data:`ROLES`, ACL path syntax;
* :mod:`.store` -- the access files and the management functions (blocking);
* :mod:`.control` -- :class:`AccessControl`, the in-memory snapshot the server asks;
* :mod:`.hashing`, :mod:`.tickets`, :mod:`.throttle`, :mod:`.logincache` -- the mechanisms.
"""

from __future__ import annotations

from .control import AccessControl
from .hashing import MIN_PASSWORD_LENGTH, hash_password, verify_password
from .logincache import VerifiedPasswords
from .privileges import (
    ALL_PRIVILEGES,
    NO_ACCESS,
    ROLES,
    Privilege,
    check_role,
    datastore_acl_path,
    normalize_acl_path,
    parse_acl_path,
    remote_acl_path,
)
from .store import (
    AclEntry,
    TokenInfo,
    UserInfo,
    acl_list,
    acl_remove,
    acl_update,
    create_user,
    delete_token,
    generate_token,
    get_user,
    list_tokens,
    list_users,
    parse_tokenid,
    parse_userid,
    remove_user,
    set_password,
    update_token,
    update_user,
)
from .throttle import LoginThrottle, LoginThrottled
from .tickets import TICKET_LIFETIME

__all__ = [
    "ALL_PRIVILEGES",
    "MIN_PASSWORD_LENGTH",
    "NO_ACCESS",
    "ROLES",
    "TICKET_LIFETIME",
    "AccessControl",
    "AclEntry",
    "LoginThrottle",
    "LoginThrottled",
    "Privilege",
    "TokenInfo",
    "UserInfo",
    "VerifiedPasswords",
    "acl_list",
    "acl_remove",
    "acl_update",
    "check_role",
    "create_user",
    "datastore_acl_path",
    "delete_token",
    "generate_token",
    "get_user",
    "hash_password",
    "list_tokens",
    "list_users",
    "normalize_acl_path",
    "parse_acl_path",
    "parse_tokenid",
    "parse_userid",
    "remote_acl_path",
    "remove_user",
    "set_password",
    "update_token",
    "update_user",
    "verify_password",
]
