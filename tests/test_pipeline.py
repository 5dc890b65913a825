"""The encode pipeline on the CPU: features equal the pipeline done by hand, files are atomic and resumable,
bad videos fail clearly, host memory stays bounded on long videos."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import data_dir, fixture_dir
from pipeline_helpers import compare_to_file, decoded_frames, tiny_siglip, write_video

pytest.importorskip("av")
pytest.importorskip("transformers")

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.pipeline import ClipReader, FeatureWriter, is_complete, read_metadata  # noqa: E402
from autogaze_ext.greedy import GreedyGazer  # noqa: E402
from autogaze_ext.synthetic import moving_objects_clip  # noqa: E402

# fp32 on the CPU; the only differences come from GEMMs over batches of other sizes
RTOL = 1e-5


@pytest.fixture(scope="module")
def gazer():
    d = fixture_dir()
    if d is None:
        return None  # the training-free gazer then
    return ag.AutoGaze.from_pretrained(d / "model")


def _encoder(gazer, **kw):
    args = dict(device="cpu", batch_size=4)
    if gazer is not None:
        args["gazing_ratio"] = 0.05
    else:
        args["max_error"] = 0.3
    return ag.Encoder(gazer, tiny_siglip(), **{**args, **kw})


def test_odd_size_clip_matches_by_hand(tmp_path, gazer):
    # 20 frames (a full clip and a short one of 4), 250 x 470 -> 2 x 3 tiles; batches of 4 cross clips
    path = write_video(tmp_path / "odd.mp4", moving_objects_clip(20, 250, 470, seed=3))
    enc = _encoder(gazer)
    res = enc.encode(path, tmp_path / "odd.safetensors")
    assert (res.frames, res.clips, res.tiles) == (20, 2, 6)
    assert compare_to_file(enc, decoded_frames(path), tmp_path / "odd.safetensors", RTOL) == 12
    f = ag.load_features(tmp_path / "odd.safetensors")
    assert f.total_tokens == res.tokens > 0
    assert int(f.tokens[:, 1].max()) == 19  # the repeats of frame 19 were dropped
    m = f.meta
    assert m["geometry"]["rows"] == 2 and m["geometry"]["cols"] == 3 and m["frames"] == 20
    assert m["settings"]["vit"]["family"] and m["version"] == ag.__version__
    assert m["settings"]["gazing_ratio"] == (0.05 if gazer is not None else None)


def test_example_video_matches_by_hand(tmp_path, gazer):
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("example video not available (../shared/data)")
    frames = decoded_frames(d / "example_input.mp4")[:24]
    enc = _encoder(gazer, batch_size=3, tile_mode="pad")
    res = enc.encode(frames, tmp_path / "ex.safetensors")  # frames in memory: the same pipeline
    assert res.frames == 24 and res.tiles == 4
    assert compare_to_file(enc, frames, tmp_path / "ex.safetensors", RTOL) == 8


def test_views_and_boxes(tmp_path, gazer):
    frames = moving_objects_clip(16, 300, 500, seed=4)
    enc = _encoder(gazer)
    enc.encode(frames, tmp_path / "v.safetensors")
    f = ag.load_features(tmp_path / "v.safetensors")
    assert "VideoFeatures(" in repr(f) and "tiles" in repr(f)
    parts = [tc.features for tc in f]
    assert torch.equal(torch.cat(parts), f.features)
    seq, fr = f.clip_sequence(0)
    assert torch.equal(seq, torch.cat([tc.features for tc in f.clip(0)]))
    assert fr.shape[0] == seq.shape[0] and int(fr.min()) >= 0 and int(fr.max()) <= 15
    b = f.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 500).all() and (b[:, 3] <= 300).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # a token's box: 224-px tiles resized from 300x500 onto a 448x672 canvas (2 x 3 tiles)
    tok = f.tokens
    i = int(torch.nonzero(tok[:, 3] >= 69)[0]) if (tok[:, 3] >= 69).any() else 0
    clip, frame, tile, tid = tok[i].tolist()
    if tid >= 69:
        r, c = divmod(tid - 69, 14)
        x0 = (tile % 3) * 224 + c * 16
        y0 = (tile // 3) * 224 + r * 16
        assert torch.allclose(b[i], torch.tensor([x0 * 500 / 672, y0 * 300 / 448, (x0 + 16) * 500 / 672,
                                                  (y0 + 16) * 300 / 448]), atol=1e-3)
    with pytest.raises(IndexError):
        f.tile_clip(1, 0)


def test_resume_skips_complete_files(tmp_path, gazer):
    frames = moving_objects_clip(8, 224, 224, seed=5)
    enc = _encoder(gazer)
    out = tmp_path / "r.safetensors"
    enc.encode(frames, out)
    stamp = out.stat().st_mtime_ns
    res = enc.encode(frames, out, overwrite=False)
    assert res.skipped and out.stat().st_mtime_ns == stamp
    # a leftover partial file from a crash is not complete and is replaced
    (tmp_path / "p.safetensors.partial").write_bytes(b"\0" * 100)
    (tmp_path / "p.safetensors").write_bytes(b"\0" * 100)
    assert not is_complete(tmp_path / "p.safetensors")
    res = enc.encode(frames, tmp_path / "p.safetensors", overwrite=False)
    assert not res.skipped and is_complete(tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors.partial").exists()


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_video_fails_clearly_and_leaves_nothing(tmp_path, gazer, faststart):
    path = write_video(tmp_path / "t.mp4", moving_objects_clip(48, 224, 224, seed=6), faststart=faststart)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 6 // 10])
    out = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match="t.mp4.*(truncated|corrupt)"):
        _encoder(gazer).encode(path, out)
    assert sorted(os.listdir(tmp_path)) == ["t.mp4"]


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureWriter(out, 8, torch.float32) as w:
            w.append_rows(torch.ones(3, 8), torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, 4),
                          torch.tensor([3]))
            assert (tmp_path / "w.safetensors.partial").exists() and read_metadata(
                tmp_path / "w.safetensors.partial") is None
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    w = FeatureWriter(out, 8, torch.bfloat16)
    with pytest.raises(ValueError, match="append_rows"):
        w.append_rows(torch.ones(3, 8, dtype=torch.bfloat16), torch.zeros(2, 4, dtype=torch.int32), torch.zeros(3, 4),
                      torch.tensor([3]))
    w.append_rows(torch.arange(24.0).view(3, 8).bfloat16(), torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, 4),
                  torch.tensor([1, 2]))
    w.append_clip(0, 16)
    w.commit({"geometry": {"tiles": 2, "rows": 1, "cols": 2}, "feature_dim": 8, "features_dtype": "bfloat16"})
    from safetensors.torch import load_file

    t = load_file(str(out))
    assert torch.equal(t["features"], torch.arange(24.0).view(3, 8).bfloat16())
    assert t["cu_seqlens"].tolist() == [0, 1, 3] and t["clips"].tolist() == [[0, 16]]
    assert read_metadata(out)["total_tokens"] == 3
    with open(out, "ab") as f:  # appended to: no longer complete
        f.write(b"x")
    assert not is_complete(out)


def test_clip_reader_in_memory_and_errors():
    frames = moving_objects_clip(20, 32, 48, seed=7)
    clips = list(ClipReader(frames, 16))
    assert [c.real for c in clips] == [16, 4] and [c.first_frame for c in clips] == [0, 16]
    # a short clip repeats its last frame (values read before the buffer is released)
    clips = []
    for c in ClipReader(frames, 16):
        clips.append((c.real, c.frames.clone()))
        c.release()
    assert torch.equal(clips[1][1][5], torch.from_numpy(frames[19]))
    mixed = [frames[0], frames[1], np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame size changed"):
        for c in ClipReader(mixed, 2):
            c.release()
    with pytest.raises(ValueError, match="uint8"):
        ClipReader(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="clip_len"):
        ClipReader(frames, 0)


def test_bad_video_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="empty"):
        ClipReader(str(tmp_path / "empty.mp4"))
    with pytest.raises(ValueError, match="junk.mp4.*not a video"):
        ClipReader(str(tmp_path / "junk.mp4"))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        ClipReader(str(tmp_path / "missing.mp4"))


def test_long_video_keeps_host_memory_bounded(tmp_path):
    """640 frames of 224 x 448 (2 tiles): RSS may not grow with the length once the pipeline runs."""
    chunks = (moving_objects_clip(64, 224, 448, seed=s) for s in range(10))
    path = write_video(tmp_path / "long.mp4", chunks)
    enc = ag.Encoder(GreedyGazer(max_error=50.0), tiny_siglip(), device="cpu", batch_size=4)
    from autogaze_ext.pipeline.encoder import _rss_mib

    samples = []
    res = enc.encode(path, tmp_path / "long.safetensors", progress=lambda p: samples.append(_rss_mib()))
    assert res.frames == 640 and len(samples) == 20  # 40 clips x 2 tiles in batches of 4
    # a batch's tiles come and go (RSS swings by ~60 MiB between batches); frames kept for the whole video
    # would add 193 MiB over the run, ~140 MiB between the early and the late samples
    early, late = np.mean(samples[3:8]), np.mean(samples[-5:])
    assert late - early < 50, f"RSS grew {late - early:.1f} MiB between frames 96-256 and 480-640: {samples}"


# ---------------------------------------------------------------------------------------------- CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "autogaze_ext", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vit")
    tiny_siglip().save_pretrained(d)
    return d


def test_cli_encode_folder_resume_and_failures(tmp_path, vit_dir):
    src = tmp_path / "videos"
    (src / "sub").mkdir(parents=True)
    write_video(src / "a.mp4", moving_objects_clip(10, 224, 224, seed=8))
    write_video(src / "sub" / "b.mp4", moving_objects_clip(6, 200, 260, seed=9))
    (src / "broken.mp4").write_bytes(b"\0" * 64)
    out = tmp_path / "out"
    summary = tmp_path / "summary.json"
    r = _cli("encode", str(src), "--out", str(out), "--vit", str(vit_dir), "--max-error", "0.4", "--device", "cpu",
             "--json", str(summary), "--quiet")
    assert r.returncode == 1, r.stderr
    assert "broken.mp4" in r.stderr and "1 of 3 videos failed" in r.stderr and "Traceback" not in r.stderr
    assert is_complete(out / "a.safetensors") and is_complete(out / "sub" / "b.safetensors")
    assert not (out / "broken.safetensors").exists()
    js = json.loads(summary.read_text())
    assert {v["status"] for v in js["videos"]} == {"ok", "failed"}
    stamp = (out / "a.safetensors").stat().st_mtime_ns
    r = _cli("encode", str(src / "a.mp4"), "--out", str(out), "--vit", str(vit_dir), "--device", "cpu", "--quiet")
    assert r.returncode == 0 and "skip (complete)" in r.stderr
    assert (out / "a.safetensors").stat().st_mtime_ns == stamp


def test_cli_encode_checks_before_decoding(tmp_path, vit_dir):
    v = write_video(tmp_path / "a.mp4", moving_objects_clip(4, 224, 224))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for args, msg in [(["--out", str(afile)], "--out"), (["--out", str(tmp_path / "o"), "--gazing-ratio", "2"],
                                                          "--gazing-ratio"),
                      (["--out", str(tmp_path / "o"), "--device", "tpu"], "--device"),
                      (["--out", str(tmp_path / "o"), "--threads", "0"], "--threads"),
                      (["--out", str(tmp_path / "o"), "--task-loss-requirement", "0.5"], "--task-loss-requirement"),
                      (["--out", str(tmp_path / "o"), "--json", str(tmp_path)], "--json")]:
        r = _cli("encode", v, *args, "--vit", str(vit_dir), "--quiet")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = _cli("encode", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "nope.mp4" in r.stderr


def test_encoder_argument_checks(gazer):
    vit = tiny_siglip()
    for kw, msg in [(dict(precision="fp64"), "precision"), (dict(batch_size=0), "batch_size"),
                    (dict(tile_mode="crop"), "tile_mode"), (dict(device="tpu"), "device"),
                    (dict(clip_len=17), "clip_len"), (dict(features_dtype=torch.int8), "features_dtype")]:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=msg):
            ag.Encoder(gazer, vit, **{"device": "cpu", **kw})
    with pytest.raises(TypeError, match="gazer"):
        ag.Encoder(42, vit, device="cpu")
    with pytest.raises(TypeError, match="vit"):
        ag.Encoder(gazer, 42, device="cpu")
    with pytest.raises(ValueError, match="task_loss_requirement"):
        ag.Encoder(None, vit, device="cpu", task_loss_requirement=0.5)
    from transformers import SiglipVisionConfig, SiglipVisionModel

    v14 = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=224, patch_size=14))
    with pytest.raises(ValueError, match="16-px patches"):
        ag.Encoder(gazer, v14, device="cpu")
    enc = ag.Encoder(gazer, vit, device="cpu")
    with pytest.raises(ValueError, match="dense"):
        ag.Encoder(gazer, vit, device="cpu", dense=True).encode(np.zeros((2, 32, 32, 3), np.uint8), "x.safetensors")
    with pytest.raises(ValueError, match="max_frames"):
        enc.encode(np.zeros((2, 32, 32, 3), np.uint8), None, max_frames=0)
