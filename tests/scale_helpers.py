"""Jobs for the Ray tests, importable by Ray's worker processes (the tests put this folder on their path)."""
from __future__ import annotations

import os
import time

from autogaze_ext.scale import EncodeJob


class KillOnceJob(EncodeJob):
    """EncodeJob that, on the first attempt at the video named ``victim``, stops after its first batch has
    been gazed, writes its process id to ``pid_file`` and waits to be killed (the test kills it with
    os.kill); the retry in the restarted actor encodes it normally."""

    def __init__(self, encoder_kwargs, victim: str, pid_file: str, **kw):
        super().__init__(encoder_kwargs, **kw)
        self.victim, self.pid_file = victim, pid_file

    def run(self, video, output):
        if os.path.basename(video) != self.victim or os.path.exists(self.pid_file):
            return super().run(video, output)

        def progress(_):
            tmp = self.pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, self.pid_file)
            time.sleep(120)  # killed here, mid-video (the staging file is open and partly written)
            raise RuntimeError("the test did not kill this worker")

        res = self.encoder.encode(video, output, max_frames=self.max_frames, progress=progress)
        return {"clips": res.clips, "frames": res.frames, "tokens": res.tokens}
