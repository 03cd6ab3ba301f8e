__all__ = ["ConsistentHashRing", "stable_hash64"]
from routing.hashring import ConsistentHashRing, stable_hash64
