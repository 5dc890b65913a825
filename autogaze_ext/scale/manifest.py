"""Which videos a run covers and where each one's output goes: folders, glob patterns, and manifest files.

A manifest is a list of paths or URIs that PyAV can open (``http(s)://``, ``file:``, any FFmpeg protocol):
  .txt      one per line; blank lines and lines starting with ``#`` are ignored
  .csv      a header row with a ``path`` column (else the first column); optional ``output`` column
  .parquet  a ``path`` column; optional ``output`` column (needs pyarrow, which ``[ray]`` brings)

``output`` (when given) is the output file relative to the output folder. Otherwise outputs keep the layout
of the inputs below their common folder (URIs: below the common prefix of host + path), with the extension
replaced by ``suffix``, so two videos never share an output; a collision is an error naming both.
"""
from __future__ import annotations

import csv
import glob
import os
import re

from ..pipeline.cli import VIDEO_EXTENSIONS, collect_inputs
from ..pipeline.decode import is_uri

_GLOB = re.compile(r"[*?\[]")


def _key(path: str) -> str:
    """The part of a path or URI that its output layout follows: an absolute path, or host + path of a URI."""
    if not is_uri(path):
        return os.path.abspath(path)
    rest = path.split(":", 1)[1].split("?", 1)[0].split("#", 1)[0]
    return "/" + rest.lstrip("/")


def _pairs_for(paths: list[str], out_dir: str, outputs: list[str | None] | None, suffix: str,
               source: str) -> list[tuple[str, str]]:
    keys = [_key(p) for p in paths]
    if not keys:
        raise ValueError(f"{source}: lists no videos")
    common = os.path.commonpath([os.path.dirname(k) for k in keys])
    pairs, seen = [], {}
    for i, (p, k) in enumerate(zip(paths, keys)):
        given = outputs[i] if outputs is not None else None
        if given:
            if os.path.isabs(given) or ".." in given.replace("\\", "/").split("/"):
                raise ValueError(f"{source}: row {i + 1}: output {given!r} must be a relative path inside the "
                                 f"output folder")
            out = os.path.join(out_dir, given)
        else:
            out = os.path.join(out_dir, os.path.splitext(os.path.relpath(k, common))[0] + suffix)
        a = os.path.abspath(out)
        if a in seen and seen[a] != p:
            raise ValueError(f"{source}: {seen[a]!r} and {p!r} would both write {out!r}; give an output column")
        if a not in seen:
            seen[a] = p
            pairs.append((p, out))
    return pairs


def read_manifest(path: str, out_dir: str, suffix: str = ".safetensors") -> list[tuple[str, str]]:
    """(video, output file) pairs of a .txt / .csv / .parquet manifest (see the module docstring)."""
    if not os.path.isfile(path):
        raise ValueError(f"--manifest: no such file: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    outputs = None
    if ext == ".txt":
        with open(path, encoding="utf-8") as f:
            paths = [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    elif ext == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise ValueError(f"--manifest: {path!r} is empty")
        head = [h.strip().lower() for h in rows[0]]
        col = head.index("path") if "path" in head else 0
        ocol = head.index("output") if "output" in head else None
        body = rows[1:] if ("path" in head or not _looks_like_video(rows[0][0])) else rows
        paths = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
        if ocol is not None:
            outputs = [(r[ocol].strip() if len(r) > ocol else "") or None for r in body if len(r) > col and r[col].strip()]
    elif ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("--manifest: reading a .parquet manifest needs pyarrow: pip install 'autogaze-ext[ray]' "
                              "(or pyarrow)") from None
        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise ValueError(f"--manifest: {path!r} has no 'path' column (columns: {table.column_names})")
        paths = [str(p) for p in table.column("path").to_pylist() if p]
        if "output" in table.column_names:
            outputs = [o or None for o, p in zip(table.column("output").to_pylist(), table.column("path").to_pylist())
                       if p]
    else:
        raise ValueError(f"--manifest: expected a .txt, .csv or .parquet file, got {path!r}")
    for p in paths:
        if not is_uri(p) and not os.path.isfile(p):
            raise ValueError(f"--manifest: {path!r} lists {p!r}, which is not a file")
    return _pairs_for(paths, out_dir, outputs, suffix, f"--manifest {path!r}")


def _looks_like_video(s: str) -> bool:
    return s.strip().lower().endswith(VIDEO_EXTENSIONS) or is_uri(s.strip())


def expand_inputs(inputs: list[str], out_dir: str, suffix: str = ".safetensors") -> list[tuple[str, str]]:
    """(video, output file) pairs of command-line inputs: files and folders as ``autogaze-ext encode`` lays them
    out, glob patterns (``videos/**/*.mp4``) keeping the layout below the pattern's fixed folder, URIs by name."""
    plain, pairs = [], []
    for item in inputs:
        if is_uri(item):
            pairs += _pairs_for([item], out_dir, None, suffix, f"input {item!r}")
        elif _GLOB.search(item) and not os.path.exists(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            if not found:
                raise ValueError(f"inputs: the pattern {item!r} matches no files")
            fixed = item[: _GLOB.search(item).start()]
            root = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
            for f in found:
                rel = os.path.splitext(os.path.relpath(f, root or "."))[0]
                pairs.append((f, os.path.join(out_dir, rel + suffix)))
        else:
            plain.append(item)
    if plain:
        pairs += [(v, os.path.splitext(o)[0] + suffix) for v, o in collect_inputs(plain, out_dir)]
    seen: dict[str, str] = {}
    unique = []
    for v, o in pairs:
        a, src = os.path.abspath(o), (v if is_uri(v) else os.path.abspath(v))
        if a in seen:
            if seen[a] != src:
                raise ValueError(f"inputs: {seen[a]!r} and {v!r} would both write {o!r}; encode them into different "
                                 f"--out folders")
            continue
        seen[a] = src
        unique.append((v, o))
    return unique
