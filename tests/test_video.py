"""Video pipeline: decoding, clips, tiles, stitching back to source pixels, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.greedy import GreedyGazer  # noqa: E402
from autogaze_ext.synthetic import moving_objects_clip  # noqa: E402
from autogaze_ext.video import (TileGeometry, boxes_from_masks, gaze_clips, iter_clips, iter_frames,  # noqa: E402
                                probe, stitch_masks, tile_clip)
from autogaze_ext.viz import VideoWriter  # noqa: E402
from conftest import data_dir  # noqa: E402


def _write(path, frames, fps=25):
    with VideoWriter(str(path), fps) as w:
        for f in frames:
            w.write(f)
    return path


@pytest.fixture(scope="module")
def example_video():
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("../shared/data/example_input.mp4 not available")
    return d / "example_input.mp4"


def test_probe_and_decode_real_video(example_video):
    info = probe(example_video)
    assert (info.width, info.height, info.frames) == (448, 448, 64) and info.fps == 25
    frames = list(iter_frames(example_video, max_frames=20))
    assert len(frames) == 20 and frames[0].shape == (448, 448, 3) and frames[0].dtype == np.uint8
    half = list(iter_frames(example_video, fps=12.5))
    assert 31 <= len(half) <= 33


def test_pipeline_on_real_video(example_video):
    clips = iter_clips(iter_frames(example_video, max_frames=20), 16)
    res = list(gaze_clips(GreedyGazer(max_error=0.2), clips, batch_rows=8, reconstruct=True))
    assert [r.first_frame for r in res] == [0, 16] and [len(r.tokens_each_frame) for r in res] == [16, 4]
    assert res[0].geometry.tiles == 4 and res[0].tokens_possible == 4 * 265
    assert all(n >= 4 for r in res for n in r.tokens_each_frame)  # >= 1 token per tile and frame
    assert res[1].reconstruction.shape == (4, 3, 448, 448)
    boxes = res[0].boxes(0)
    assert len(boxes) == res[0].tokens_each_frame[0]
    assert all(0 <= x0 < x1 <= 448 and 0 <= y0 < y1 <= 448 for x0, y0, x1, y1, _ in boxes)


@pytest.mark.parametrize("shape,mode,grid", [
    ((250, 300), "resize", (2, 2)), ((250, 300), "pad", (2, 2)),
    ((500, 224), "resize", (3, 1)), ((100, 90), "resize", (1, 1)),
])
def test_tiling_odd_and_portrait_sizes(shape, mode, grid):
    H, W = shape
    clip = moving_objects_clip(2, H, W, seed=1)
    geom = TileGeometry(H, W, mode)
    assert (geom.rows, geom.cols) == grid
    tiles = tile_clip(clip, geom, ag.AutoGazeImageProcessor())
    assert tiles.shape == (grid[0] * grid[1], 2, 3, 224, 224)
    if mode == "pad":  # padding is the mean colour: zero after normalisation
        assert torch.all(tiles[-1, :, :, H - 224:, W - 224:] == 0)


def test_stitching_maps_tokens_to_source_pixels():
    geom = TileGeometry(448, 672, "resize")  # 2 x 3 tiles, no resampling
    grids = [2, 4, 7, 14]
    masks = [torch.zeros(6, 1, g * g) for g in grids]
    masks[3][4, 0, 0] = 1   # tile (1, 1), finest cell (0, 0)
    masks[0][2, 0, 3] = 1   # tile (0, 2), coarse cell (1, 1)
    canvas = stitch_masks(masks, geom, grids)
    assert canvas[3].shape == (1, 28, 42) and canvas[3][0, 14, 14] == 1
    boxes = sorted(boxes_from_masks(canvas, geom, 0), key=lambda b: b[4])
    assert boxes[0] == (448 + 112, 112, 672, 224, 0)
    assert boxes[1] == (224, 224, 240, 240, 3)
    # a 400x600 source also makes 2 x 3 tiles: the canvas is resized, boxes scale back by 400/448, 600/672
    scaled = boxes_from_masks(canvas, TileGeometry(400, 600, "resize"), 0)
    assert (500, 100, 600, 200, 0) in [tuple(round(v, 6) for v in b[:4]) + (b[4],) for b in scaled]


def test_one_frame_and_seventeen_frames(tmp_path):
    for T in (1, 17):
        path = _write(tmp_path / f"c{T}.mp4", moving_objects_clip(T, 224, 224, seed=T))
        frames = list(iter_frames(path))
        assert len(frames) == T
        res = list(gaze_clips(GreedyGazer(max_error=0.3), iter_clips(frames, 16)))
        assert sum(len(r.tokens_each_frame) for r in res) == T


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="folder"):
        probe(tmp_path)
    (tmp_path / "text.mp4").write_text("this is not a video")
    with pytest.raises(ValueError, match="not a video, or corrupt"):
        probe(tmp_path / "text.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        probe(tmp_path / "empty.mp4")
    good = _write(tmp_path / "good.mp4", moving_objects_clip(12, 224, 224))
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt|no decodable|not a video"):
        list(iter_frames(tmp_path / "cut.mp4"))
    with pytest.raises(ValueError, match="max_frames"):
        list(iter_frames(good, max_frames=0))
    with pytest.raises(ValueError, match="tile_mode"):
        TileGeometry(10, 10, "crop")


def test_stream_gazer_matches_clip_gazing():
    from autogaze_ext.video import StreamGazer

    frames = moving_objects_clip(18, 224, 448, seed=5)
    g = GreedyGazer(max_error=0.15)
    sg = StreamGazer(g, clip_len=16)
    streamed = [sg.push(f) for f in frames]
    clips = list(gaze_clips(g, iter_clips(frames, 16), batch_rows=64))
    static = [n for c in clips for n in c.tokens_each_frame]
    assert [s.tokens_each_frame[0] for s in streamed] == static
    assert streamed[16].first_frame == 16 and streamed[16].index == 1
    with pytest.raises(ValueError, match="size changed"):
        sg.push(frames[0][:100])
