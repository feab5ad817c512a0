"""Forgetting a user (contract section 6): the deny list's identity of a user.

The deny list holds a domain-separated SHA-256 of each forgotten ``user_id``, never the
id itself, so the list (and the audit records that name it) do not spell out the id. It
is pseudonymous, not anonymous: whoever can guess an id (a sequential number, an e-mail)
can hash it and find it in the list. Pure: the Redis set that holds the list is named by
``denied_users_key``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from schemas.redis_layout import RedisKeys


def user_hash(user_id: str) -> str:
    """The deny list's entry for ``user_id`` (sha256, domain-separated)."""
    return hashlib.sha256(b"flywheel-denied-user\0" + user_id.encode("utf-8")).hexdigest()


def denied_users_key(redis_prefix: str) -> str:
    return RedisKeys(redis_prefix).denied_users


class DenyList:
    """Which users are forgotten; answers per ``user_id`` with a small cache."""

    def __init__(self, hashes: Iterable[str] = ()) -> None:
        self.hashes = frozenset(hashes)
        self._cache: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self.hashes)

    def denies(self, user_id: str) -> bool:
        if not self.hashes:
            return False
        known = self._cache.get(user_id)
        if known is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            known = self._cache[user_id] = user_hash(user_id) in self.hashes
        return known
