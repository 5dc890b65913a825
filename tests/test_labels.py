"""``autogaze-ext label`` and the label files: the official format computed independently (PyAV frames, the
processor at shortest edge 224, bicubic 224, the greedy gazer), resume, interruption, per-video failures, and
clear errors for bad label files. About 10 s on a shared 2-core CPU (OMP_NUM_THREADS=1)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")

from pipeline_helpers import write_video  # noqa: E402

from autogaze_ext.cli import main  # noqa: E402
from autogaze_ext.synthetic import moving_objects_clip  # noqa: E402
from autogaze_ext.training import labels as L  # noqa: E402

CLIP = 4


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "data" / "train"
    root.mkdir(parents=True)
    paths = []
    for i, (frames, h, w) in enumerate([(6, 96, 128), (3, 112, 112), (8, 80, 144)]):  # v1: shorter than the clip
        paths.append(write_video(root / f"v{i}.mp4", moving_objects_clip(frames, h, w, seed=i)))
    return tmp_path / "data", paths


def label(*args) -> int:
    return main(["label", *map(str, args), "--clip-len", str(CLIP), "--device", "cpu", "--quiet"])


def expected_record(path: str, max_error: float = 0.15) -> dict:
    """The record made by hand: PyAV frames, the first CLIP (the last repeated), processor, greedy gazer."""
    from autogaze_ext.greedy import GreedyGazer
    from autogaze_ext.processor import AutoGazeImageProcessor
    from autogaze_ext.video import iter_frames

    frames = list(iter_frames(path, max_frames=CLIP))
    frames += [frames[-1]] * (CLIP - len(frames))
    x = AutoGazeImageProcessor(size={"shortest_edge": 224})(np.stack(frames))  # (1, T, 3, H', W')
    x = F.interpolate(x[0], size=(224, 224), mode="bicubic", align_corners=False)[None]
    out = GreedyGazer(max_error=max_error).generate(x)
    err = out.extra["reconstruction_error"]
    rec = {"gazing_pos": [], "task_losses": []}
    start = 0
    for n in out.num_gazing_each_frame.tolist():
        keep = ~out.if_padded_gazing[0, start: start + n]
        rec["gazing_pos"].append(out.gazing_pos[0, start: start + n][keep].tolist())
        rec["task_losses"].append(err[0, start: start + n][keep].tolist())
        start += n
    return rec


def test_label_writes_the_official_format(videos, tmp_path):
    from autogaze_ext.training.collate import collate_gazing_info

    root, paths = videos
    out = tmp_path / "labels.json"
    assert label(root, "--out", out, "--batch-rows", 2) == 0
    data = json.loads(out.read_text())
    assert sorted(data) == sorted(paths)
    for p in paths:
        want, got = expected_record(p), data[p]
        assert got["gazing_pos"] == want["gazing_pos"]
        assert len(got["gazing_pos"]) == CLIP and all(265 * t <= i < 265 * (t + 1)
                                                       for t, f in enumerate(got["gazing_pos"]) for i in f)
        for a, b in zip(got["task_losses"], want["task_losses"]):
            assert a == pytest.approx(b, abs=1e-6)
    # the official collate takes the lists as they are
    info = collate_gazing_info([data[p]["gazing_pos"] for p in paths], [data[p]["task_losses"] for p in paths])
    assert info["gazing_pos"].shape[0] == 3
    assert L.read_labels(out, clip_len=CLIP) == data


def test_resume_skips_labelled_videos(videos, tmp_path, capsys):
    root, paths = videos
    out = tmp_path / "labels.json"
    assert label(paths[0], "--out", out) == 0
    first = json.loads(out.read_text())
    capsys.readouterr()
    assert label(root, "--out", out, "--max-error", "0.05") == 0
    err = capsys.readouterr().err
    assert "2 video(s) to label, 1 already in" in err
    data = json.loads(out.read_text())
    assert data[paths[0]] == first[paths[0]]  # kept as it was (not relabelled with the new --max-error)
    assert data[paths[2]]["gazing_pos"] == expected_record(paths[2], 0.05)["gazing_pos"]
    assert label(root, "--out", out, "--max-error", "0.05", "--overwrite") == 0
    assert json.loads(out.read_text())[paths[0]]["gazing_pos"] == expected_record(paths[0], 0.05)["gazing_pos"]


def test_interrupt_keeps_finished_batches(videos, tmp_path, monkeypatch, capsys):
    import autogaze_ext.training.labels as labels_mod

    root, paths = videos
    out = tmp_path / "labels.json"
    real, calls = labels_mod.label_clips, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(labels_mod, "label_clips", flaky)
    assert label(root, "--out", out, "--batch-rows", 1) == 130
    assert list(json.loads(out.read_text())) == [paths[0]]
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(labels_mod, "label_clips", real)
    assert label(root, "--out", out, "--batch-rows", 1) == 0
    assert sorted(json.loads(out.read_text())) == sorted(paths)


def test_failed_video_is_reported_and_others_labelled(videos, tmp_path, capsys):
    root, paths = videos
    bad = root / "train" / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "labels.json"
    assert label(root, "--out", out) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "1 failed" in err
    assert sorted(json.loads(out.read_text())) == sorted(paths)


def test_label_option_checks(videos, tmp_path, capsys):
    root, _ = videos
    assert label(root, "--out", tmp_path / "labels.txt") == 2
    assert "--out" in capsys.readouterr().err
    assert label(root, "--out", tmp_path / "l.json", "--task-loss-requirement", "0.5") == 2
    assert "--task-loss-requirement" in capsys.readouterr().err
    assert label(root, "--out", tmp_path / "no" / "l.json") == 2
    assert label(tmp_path / "missing", "--out", tmp_path / "l.json") == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_checkpoint_gazer_task_losses_come_from_the_painter(videos):
    """Any gazer: the record's last task loss of a frame is that frame's error with all its tokens painted,
    computed independently by reconstruct_tiles (the masks, coarse to fine)."""
    from autogaze_ext import AutoGaze, AutoGazeConfig

    torch.manual_seed(0)
    model = AutoGaze(AutoGazeConfig())
    clip, _ = L.read_clip(videos[1][0], CLIP)
    out = model.generate(clip[None], gazing_ratio=0.03)
    rec = L.label_clips(model, clip[None], gazing_ratio=0.03)[0]
    final = L.frame_errors(clip[None], out.gazing_mask)[0]
    assert [len(f) for f in rec["gazing_pos"]] == out.real_tokens_each_frame()[0].tolist()
    assert [f[-1] for f in rec["task_losses"]] == pytest.approx(final.tolist(), abs=1e-5)


# ------------------------------------------------------------------------------------- bad label files
def good_record(frames: int = CLIP) -> dict:
    return {"gazing_pos": [[265 * t + 3, 265 * t + 70] for t in range(frames)],
            "task_losses": [[0.5, 0.25] for _ in range(frames)]}


def write(tmp_path, content) -> str:
    p = tmp_path / "labels.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r["gazing_pos"][0].append(265), r"video 'a/b/c\.mp4', frame 0: id 265 is outside frame 0's range "
                                               r"\[0, 265\) \(local id 265 >= 265\)"),
    (lambda r: r["gazing_pos"][2].append(7), r"video 'a/b/c\.mp4', frame 2: id 7 is outside"),
    (lambda r: r["gazing_pos"].pop(), r"video 'a/b/c\.mp4': 'gazing_pos' has 3 frame\(s\), expected 4"),
    (lambda r: r["task_losses"][1].pop(), r"video 'a/b/c\.mp4', frame 1: 1 task loss\(es\) for 2 id\(s\)"),
    (lambda r: r["gazing_pos"][1].append(265 + 3), r"frame 1: id 268 is listed twice"),
    (lambda r: r["task_losses"][3].__setitem__(0, "x"), r"frame 3: task loss 'x' is not a finite number"),
    (lambda r: r["gazing_pos"][0].__setitem__(0, 1.5), r"frame 0: id 1.5 is not an integer"),
])
def test_bad_records_name_the_video_and_frame(tmp_path, mutate, match):
    rec = good_record()
    mutate(rec)
    with pytest.raises(ValueError, match=match):
        L.read_labels(write(tmp_path, {"a/b/c.mp4": rec}), clip_len=CLIP)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels: no such file"):
        L.read_labels(str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="is empty"):
        L.read_labels(write(tmp_path, ""))
    with pytest.raises(ValueError, match="not valid JSON"):
        L.read_labels(write(tmp_path, '{"a.mp4": {"gazing_pos": [[1]'))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        L.read_labels(write(tmp_path, [1, 2]))
    with pytest.raises(ValueError, match="holds no labelled videos"):
        L.read_labels(write(tmp_path, {}))
    with pytest.raises(ValueError, match="share the key 'd/train/v.mp4'"):
        L.read_labels(write(tmp_path, {"/x/d/train/v.mp4": good_record(), "/y/d/train/v.mp4": good_record()}),
                      clip_len=CLIP)
    # an empty frame carries one task loss (the official collate pads with the last value)
    rec = good_record()
    rec["gazing_pos"][1], rec["task_losses"][1] = [], [0.9]
    L.read_labels(write(tmp_path, {"a/b/c.mp4": rec}), clip_len=CLIP)
    rec["task_losses"][1] = []
    with pytest.raises(ValueError, match="frame 1: 0 task loss"):
        L.read_labels(write(tmp_path, {"a/b/c.mp4": rec}), clip_len=CLIP)


def test_labelled_video_missing_from_the_videos(videos, tmp_path):
    root, paths = videos
    labels = {p: good_record() for p in paths}
    labels["/elsewhere/data/train/gone.mp4"] = good_record()
    with pytest.raises(ValueError, match=r"1 labelled video\(s\) not found in --videos, e\.g\. "
                                         r"\['/elsewhere/data/train/gone\.mp4'\]"):
        L.match_videos(labels, paths)
    # matched by the last three path components, as the official loader does
    moved = {"/other/place/" + os.path.relpath(p, root.parent): r for p, r in labels.items() if "gone" not in p}
    assert sorted(v for v, _ in L.match_videos(moved, paths)) == sorted(paths)


def test_trainer_reads_label_files_made_by_label(videos, tmp_path):
    """label -> train end to end on files (decoding in a worker process), two NTP steps on a tiny model."""
    from autogaze_ext.training.trainer import TrainConfig, Trainer
    from test_training_loop import tiny_config

    root, paths = videos
    out = tmp_path / "labels.json"
    assert label(root, "--out", out) == 0
    cfg = TrainConfig(videos=[str(root)], labels=str(out), out=str(tmp_path / "ck"), model_config=tiny_config(tmp_path),
                      steps=2, batch_size=3, workers=1, device="cpu", clip_len=CLIP, quiet=True)
    tr = Trainer(cfg)
    assert len(tr.dataset) == 3 and tr.train() == 2
    assert (tmp_path / "ck" / "model.safetensors").is_file()
