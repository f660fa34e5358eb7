"""The models loaded in this process, and the leases on them.

``model_pool.py`` is the :class:`ModelPool` (a count and memory budget, LRU, keep-alive,
shutdown that waits for holders); ``leases.py`` what it hands out (an entry per loaded
model, a lease per holder: a model is closed only when nobody holds it); ``memory.py`` the
process's RSS and ``malloc_trim``. It imports only :mod:`aiml.errors`: every engine that
loads model files in-process uses it, none of them is known to it.
"""

from .leases import Lease, Loaded, PoolEntry, PoolKey
from .memory import rss_bytes
from .model_pool import ModelPool

__all__ = ["Lease", "Loaded", "ModelPool", "PoolEntry", "PoolKey", "rss_bytes"]
