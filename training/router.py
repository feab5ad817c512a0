"""Which model version a user is served: deterministic buckets and the canary share.

``ModelRouter(registry).adapter_for(user_id)`` is what app servers call; ``route`` is
the pure rule under given pointers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from training.errors import RegistryPointerError

if TYPE_CHECKING:
    from training.registry import Pointers, Registry

log = logging.getLogger(__name__)

BUCKETS = 10_000


def user_bucket(user_id: str) -> int:
    """Deterministic bucket of a user in [0, 10000): sha256(user_id) mod 10000."""
    return int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest(), "big") % BUCKETS


def route(user_id: str, pointers: Pointers) -> str:
    """The version a user is served under these pointers."""
    if not pointers.stable:
        raise RegistryPointerError("the registry has no stable version")
    if pointers.canary and user_bucket(user_id) < pointers.canary_share * BUCKETS:
        return pointers.canary
    return pointers.stable


class ModelRouter:
    """What app servers call: ``ModelRouter(registry).adapter_for(user_id) -> version``.

    Pointers are re-read at most every ``refresh_s`` seconds; if a refresh fails the last
    known pointers keep serving (an S3 hiccup must not take the assistant down).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.refresh_s = (
            registry.config.router_refresh.total_seconds() if refresh_s is None else refresh_s
        )
        self.clock = clock
        self._pointers: Pointers | None = None
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def pointers(self) -> Pointers:
        with self._lock:
            if self._pointers is None or self.clock() - self._loaded_at >= self.refresh_s:
                try:
                    self._pointers = self.registry.pointers(validate=True)
                except Exception:
                    if self._pointers is None:
                        raise
                    log.warning(
                        "registry refresh failed; serving the last known pointers", exc_info=True
                    )
                self._loaded_at = self.clock()
            return self._pointers

    def adapter_for(self, user_id: str) -> str:
        """The model version this user is served."""
        return route(user_id, self.pointers())


__all__ = ["BUCKETS", "ModelRouter", "route", "user_bucket"]
