"""Reflection memory: successful reflections shared across episodes (and, via Ray, workers).

`ray_memory` (the Ray actor and client) is not imported here so that Ray stays optional.
"""

from erl.memory.memory import MemoryEntry, MemoryJournal, ReflectionMemory, bag_of_words, cosine

__all__ = ["MemoryEntry", "MemoryJournal", "ReflectionMemory", "bag_of_words", "cosine"]
