"""Checks on the folders a trainer or CLI will write into, run before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from erl.core.config import ConfigError


def check_writable(folder: str | Path, key: str) -> None:
    """`folder`, or the nearest existing folder above it, must take new files: a read-only
    output folder is reported with its config key before the run, not at its first write."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {folder} cannot be created ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {folder} is not writable ({probe} is read-only)")
