"""File-system steps of the atomic output writes (feature files, label and training-state files, the Ray runner's
staged outputs); torch-free."""
from __future__ import annotations

import os
import tempfile


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


def write_atomic(path: str, write, fsync: bool = True) -> None:
    """write(tmp) into a temporary file beside path, then rename it over path: a crash or Ctrl-C leaves the old
    file or the new one, never half of one. The file gets the usual permissions (mkstemp makes 0600)."""
    path = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_if_exists(tmp)
        raise
