"""Symbol maps: which character shows which role in a grid observation.

The model is never told what a symbol means, so the defaults avoid letters that hint at
their role (no "G" for goal, no "#" for wall): it has to learn the meanings from
experience, which is what reflection is for. Every map can be overridden per role
through the env's `symbols` param.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from erl.core.config import ConfigError


def resolve_symbols(defaults: dict[str, str], given: Any, field: str = "env.params.symbols") -> dict[str, str]:
    """`defaults` overridden by `given` (role -> one visible character); every role distinct."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{field} must be a mapping role -> character, got {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in defaults)
    if unknown:
        raise ConfigError(f"{field}: unknown role(s) {unknown}; roles: {sorted(defaults)}")
    symbols = dict(defaults)
    for role, char in given.items():
        if not isinstance(char, str) or len(char) != 1 or not char.isprintable() or char.isspace():
            raise ConfigError(f"{field}.{role} must be a single visible character, got {char!r}")
        symbols[str(role)] = char
    seen: dict[str, str] = {}
    for role, char in symbols.items():
        if char in seen:
            raise ConfigError(f"{field}: roles {seen[char]!r} and {role!r} share the character {char!r}")
        seen[char] = role
    return symbols


def render_grid(roles: list[list[str]], symbols: dict[str, str]) -> str:
    """Rows of role names -> text rows. Cells are space-separated so that BPE tokenizers
    give one token per cell instead of merging runs of the same symbol."""
    return "\n".join(" ".join(symbols[role] for role in row) for row in roles)
