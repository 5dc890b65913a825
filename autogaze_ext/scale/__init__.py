"""Dataset scale: a per-video job (``EncodeJob``: the encode pipeline; ``LabelJob``: gaze labels) over a whole
collection of videos with Ray Data, across the GPUs of one machine or a cluster; exactly once, resumable, with a
Parquet index.

Needs the ``[ray]`` extra (``pip install 'autogaze_ext[ray]'``); Ray is imported only when a run starts, so
this package (and ``autogaze_ext``) imports without it. See ``runner`` for the design.
"""
from .jobs import EncodeJob, LabelJob, VideoJob
from .manifest import expand_inputs, read_manifest
from .runner import INDEX_COLUMNS, RunResult, TransientError, connect, read_index, run, write_index

__all__ = ["EncodeJob", "INDEX_COLUMNS", "LabelJob", "RunResult", "TransientError", "VideoJob", "connect",
           "expand_inputs", "read_index", "read_manifest", "run", "write_index"]
