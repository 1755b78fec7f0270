"""The on-disk activation cache: train many epochs from one backbone pass."""

from inca.cache.build import build_cache, cache_request, subset_info
from inca.cache.read import ActivationCache

__all__ = ["ActivationCache", "build_cache", "cache_request", "subset_info"]
