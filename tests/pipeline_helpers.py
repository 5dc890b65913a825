"""Shared by the encode-pipeline tests: small videos on disk, a tiny SigLIP, and the pipeline done by hand."""
from __future__ import annotations

import numpy as np
import torch

TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                   patch_size=16)


def fixture_model_dir():
    """The official fixture checkpoint folder (the model alone travels to GPU machines), or None."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for c in [os.environ.get("AUTOGAZE_FIXTURES"), repo / ".fixtures" / "official", repo.parent / "shared" / "fixtures"
              / "official"]:
        if c and (Path(c) / "model" / "config.json").is_file():
            return Path(c) / "model"
    return None


def write_video(path, frames, fps: int = 25, faststart: bool = False, codec: str = "libx264") -> str:
    """Frames ((T, H, W, 3) uint8, or an iterable of such chunks) -> an H.264 file (even sides)."""
    import av

    chunks = [frames] if isinstance(frames, np.ndarray) else frames
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = None
        for chunk in chunks:
            for f in chunk:
                if s is None:
                    s = c.add_stream(codec, rate=fps)
                    s.width, s.height, s.pix_fmt = f.shape[1], f.shape[0], "yuv420p"
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def tiny_siglip(seed: int = 0):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP)).eval()


def decoded_frames(path) -> np.ndarray:
    from autogaze_ext.video import iter_frames

    return np.stack(list(iter_frames(str(path))))


def by_hand(enc, frames: np.ndarray):
    """The pipeline's result computed by hand from the public pieces: per clip, the gazer's and the ViT's
    processor on the tile canvas, ``generate`` on the clip's tiles, the accelerated ViT on its gaze; the
    tokens of repeated frames of a short last clip dropped. Returns {(clip, tile): (ids, frames, features)}."""
    from autogaze_ext.processor import AutoGazeImageProcessor
    from autogaze_ext.video import TileGeometry, iter_clips, tile_clip

    H, W = frames.shape[1:3]
    geom = TileGeometry(H, W, enc.tile_mode)
    vit_proc = AutoGazeImageProcessor(**enc._vit_processor)
    out, first = {}, 0
    with torch.inference_mode():
        for c, (clip, real) in enumerate(iter_clips(iter(frames), enc.clip_len)):
            g = tile_clip(clip, geom, enc.processor, enc.device)
            v = tile_clip(clip, geom, vit_proc, enc.device).to(next(enc.vit.model.parameters()).dtype)
            gaze = enc.gazer.generate(g, **enc.gaze_kwargs)
            feats = enc.vit(v, gaze=gaze).per_video()
            counts = gaze.num_gazing_each_frame.tolist()
            frame_of_slot = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
            for k in range(geom.tiles):
                real_slots = ~gaze.if_padded_gazing[k].cpu()
                fr = frame_of_slot[real_slots]
                keep = fr < real
                ids = gaze.gazing_pos[k].cpu()[real_slots] % enc.V
                out[(c, k)] = (ids[keep], fr[keep] + first, feats[k][keep.to(feats[k].device)].float().cpu())
            first += real
    return out


def compare_to_file(enc, frames: np.ndarray, path, rtol: float) -> int:
    """Asserts that the feature file equals by_hand(); returns the number of tile-clips compared."""
    import autogaze_ext as ag

    ref = by_hand(enc, frames)
    f = ag.load_features(path)
    assert f.num_clips * f.tiles == len(ref)
    for (c, k), (ids, fr, feats) in ref.items():
        tc = f.tile_clip(c, k)
        assert torch.equal(tc.token_ids.long(), ids), f"clip {c} tile {k}: token ids differ"
        assert torch.equal(tc.frames.long(), fr), f"clip {c} tile {k}: frames differ"
        got = tc.features.float()
        assert got.shape == feats.shape
        err = ((got - feats).norm() / feats.norm().clamp(min=1e-12)).item()
        assert err <= rtol, f"clip {c} tile {k}: relative error {err:.2e} > {rtol}"
    return len(ref)
