"""The embedded-mode result backend: Celery's in-memory cache backend, shared by all threads.

Celery keeps one backend instance per thread; the stock `cache+memory://` backend gives
each instance its own store, so chord counters incremented from different pool threads
would never meet. This backend hands every instance the same process-wide store.
"""
from __future__ import annotations

from celery.backends.cache import CacheBackend, DummyClient
from kombu.utils.objects import cached_property

_STORE = DummyClient()


class ProcessMemoryBackend(CacheBackend):
    def __init__(self, app, **kwargs):
        kwargs.pop("url", None)
        super().__init__(app, backend="memory", **kwargs)

    @cached_property
    def client(self) -> DummyClient:
        return _STORE
