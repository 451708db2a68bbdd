"""Who may call what: API keys (hashed in the database), roles with a permission per route,
and the audit trail of admin actions."""

from vllm_service.auth.keys import ANONYMOUS, KeyStore, Principal, generate_key, key_hash
from vllm_service.auth.roles import ROLES, Permission, permission_of, requires

__all__ = [
    "ANONYMOUS",
    "ROLES",
    "KeyStore",
    "Permission",
    "Principal",
    "generate_key",
    "key_hash",
    "permission_of",
    "requires",
]
