"""File-system steps of the atomic output writes (feature files, the Ray runner's staged outputs); torch-free."""
from __future__ import annotations

import os


def remove_if_exists(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(folder: str) -> None:
    """Make a rename inside folder durable (best effort: some file systems refuse to open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
