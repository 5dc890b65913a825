"""Dataset scale on Ray Data (CPU, a local Ray with 2 CPUs, the training-free gazer and a tiny SigLIP): the Ray
path writes the same files as the single-process Encoder, a worker killed mid-video is retried, corrupt
videos are failed rows of the index, reruns skip finished videos; manifests and the attempt counter.

The Ray part shares one local Ray instance and one run with a kill (module fixture); wall time on a 2-core
machine: see the README ("Dataset scale (Ray)").
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_helpers import tiny_siglip, write_video

pytest.importorskip("av")
pytest.importorskip("transformers")

from autogaze_ext.pipeline import Encoder  # noqa: E402
from autogaze_ext.pipeline.features import HEADER_RESERVE  # noqa: E402
from autogaze_ext.scale import expand_inputs, read_manifest  # noqa: E402
from autogaze_ext.scale import runner  # noqa: E402
from autogaze_ext.synthetic import moving_objects_clip  # noqa: E402

TESTS = Path(__file__).resolve().parent
# batches of 2 tile-clips: the 2-tile victim video has 3 batches, so the kill lands mid-video
ENCODER = dict(gazer=None, device="cpu", batch_size=2, max_error=0.3)
GOOD = {"a.mp4": (20, 224, 224, 1), "b.mp4": (40, 224, 448, 2), "sub/c.mp4": (18, 200, 260, 3)}


def _ray():
    return pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'autogaze_ext[ray]')")


def same_file(a, b) -> None:
    """The two feature files hold the same bytes, but for the metadata's creation time and stage timings."""
    da, db = Path(a).read_bytes(), Path(b).read_bytes()
    assert len(da) == len(db), f"{a}: {len(da)} bytes, {b}: {len(db)}"
    assert da[HEADER_RESERVE:] == db[HEADER_RESERVE:], f"{a} and {b}: tensor data differ"
    ha, hb = (json.loads(d[8: 8 + struct.unpack("<Q", d[:8])[0]]) for d in (da, db))
    ma, mb = (json.loads(h.pop("__metadata__")["autogaze_ext"]) for h in (ha, hb))
    for m in (ma, mb):
        m.pop("created"), m.pop("timings_s")
    assert ha == hb and ma == mb, f"{a} and {b}: headers differ"


# --------------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    src = d / "videos"
    (src / "sub").mkdir(parents=True)
    for name, (t, h, w, seed) in GOOD.items():
        write_video(src / name, moving_objects_clip(t, h, w, seed=seed))
    (src / "junk.mp4").write_bytes(b"not a video at all" * 10)  # fails in the CPU check tasks
    cut = write_video(d / "cut.mp4", moving_objects_clip(48, 224, 224, seed=4), faststart=True)
    data = Path(cut).read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])  # opens, fails while decoding (worker)
    tiny_siglip().save_pretrained(d / "vit")
    kw = {**ENCODER, "vit": str(d / "vit")}
    # the single-process reference, one intra-op thread as in the 1-CPU Ray worker
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc = Encoder(**kw)
        for name in GOOD:
            enc.encode(str(src / name), str(d / "ref" / (os.path.splitext(name)[0] + ".safetensors")))
    finally:
        torch.set_num_threads(threads)
    return d, src, kw


@pytest.fixture(scope="module")
def ray_cluster():
    ray = _ray()
    pytest.importorskip("pyarrow", reason="the Parquet index needs pyarrow (the [ray] extra brings it)")
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}},
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def first_run(videos, ray_cluster):
    """One Ray run over the folder with one CPU worker, killed with os.kill while it encodes b.mp4."""
    from scale_helpers import KillOnceJob

    d, src, kw = videos
    pid_file = d / "victim.pid"
    seen = {}

    def killer():
        t0 = time.time()
        while not pid_file.exists() and time.time() - t0 < 300:
            time.sleep(0.05)
        if pid_file.exists():
            seen["staging"] = [p.name for p in (d / "out").iterdir() if p.name.startswith(".b.safetensors.")]
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            seen["killed"] = True

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    job = KillOnceJob(kw, victim="b.mp4", pid_file=str(pid_file))
    t0 = time.perf_counter()
    res = runner.run(expand_inputs([str(src)], str(d / "out")), job, index=str(d / "out" / "index.parquet"),
                     workers=1, cpus_per_worker=1, gpus_per_worker=0, progress=False)
    th.join(timeout=1)
    return d, res, seen, time.perf_counter() - t0


def test_ray_outputs_equal_single_process(first_run):
    d, res, _, _ = first_run
    for name in GOOD:
        stem = os.path.splitext(name)[0] + ".safetensors"
        same_file(d / "out" / stem, d / "ref" / stem)
    # nothing but the finished files and the index: no staging, partial or attempt files left
    left = sorted(str(p.relative_to(d / "out")) for p in (d / "out").rglob("*") if p.is_file())
    assert left == ["a.safetensors", "b.safetensors", "index.parquet", "sub/c.safetensors"]


def test_killed_worker_is_retried(first_run):
    d, res, seen, _ = first_run
    assert seen.get("killed"), "the worker never reached the kill point"
    assert any(n.endswith(".partial") for n in seen["staging"]), seen  # killed while writing b's file
    rows = {os.path.basename(r["path"]): r for r in res.rows}
    assert rows["b.mp4"]["status"] == "ok" and rows["b.mp4"]["attempts"] == 2
    # a task whose result block died with the actor is rerun; it finds its video complete (0: not started again)
    assert rows["a.mp4"]["attempts"] in (0, 1) and rows["c.mp4"]["attempts"] in (0, 1)


def test_index_rows_and_corrupt_videos(first_run):
    d, res, _, _ = first_run
    rows = {os.path.basename(r["path"]): r for r in runner.read_index(str(d / "out" / "index.parquet"))}
    assert set(rows) == {"a.mp4", "b.mp4", "c.mp4", "junk.mp4", "truncated.mp4"}
    for name in GOOD:
        r = rows[os.path.basename(name)]
        f = __import__("autogaze_ext").load_features(r["output"])
        # seconds: None where a task rerun by Ray found the video already made by this run
        assert r["status"] == "ok" and r["error"] is None and (r["seconds"] is None or r["seconds"] > 0)
        assert (r["clips"], r["frames"], r["tokens"]) == (f.num_clips, f.meta["frames"], f.total_tokens)
        assert r["frames"] == GOOD[name][0]
    assert rows["junk.mp4"]["status"] == "failed" and "junk.mp4" in rows["junk.mp4"]["error"]
    assert "not a video" in rows["junk.mp4"]["error"] and rows["junk.mp4"]["attempts"] == 0  # CPU check task
    t = rows["truncated.mp4"]
    assert t["status"] == "failed" and t["attempts"] == 1 and "truncated.mp4" in t["error"]  # in the worker
    assert "truncated" in t["error"] or "corrupt" in t["error"]
    assert res.counts == {"ok": 3, "skipped": 0, "failed": 2}


def test_cli_rerun_resumes(first_run, ray_cluster):
    """`encode --ray --address` on the same cluster: finished videos are skipped (files untouched), a removed
    output is redone to the same bytes, the corrupt ones fail again; exit status 1 with the list."""
    d, _, _, _ = first_run
    out = d / "out"
    stamps = {n: (out / n).stat().st_mtime_ns for n in ("a.safetensors", "sub/c.safetensors")}
    (out / "b.safetensors").unlink()
    addr = ray_cluster.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "autogaze_ext", "encode", str(d / "videos"), "--out", str(out),
                        "--vit", str(d / "vit"), "--max-error", "0.3", "--batch-size", "2", "--device", "cpu",
                        "--ray", "--address", addr, "--cpus-per-gpu", "1", "--quiet", "--json", str(d / "s.json")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "1 encoded, 2 already complete, 2 failed" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "junk.mp4" in r.stderr and "truncated.mp4" in r.stderr
    for n, s in stamps.items():
        assert (out / n).stat().st_mtime_ns == s
    same_file(out / "b.safetensors", d / "ref" / "b.safetensors")
    rows = {os.path.basename(r["path"]): r for r in runner.read_index(str(out / "index.parquet"))}
    assert rows["a.mp4"]["status"] == "skipped" and rows["b.mp4"]["status"] == "ok" and rows["b.mp4"]["seconds"] > 0
    assert rows["a.mp4"]["tokens"] == __import__("autogaze_ext").load_features(out / "a.safetensors").total_tokens
    assert json.loads((d / "s.json").read_text())["counts"] == {"ok": 1, "skipped": 2, "failed": 2}


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_ray_on_gpu_equals_single_process(videos, ray_cluster, tmp_path):
    """One GPU actor (bf16 ViT, CUDA graphs): the same files as the single-process Encoder on that GPU."""
    from autogaze_ext.scale import EncodeJob

    if ray_cluster.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the local Ray sees no GPU")
    d, src, kw = videos
    kw = {**kw, "device": "cuda"}
    enc = Encoder(**kw)
    for name in GOOD:
        enc.encode(str(src / name), str(tmp_path / "ref" / (os.path.splitext(name)[0] + ".safetensors")))
    del enc
    pairs = [(str(src / n), str(tmp_path / "out" / (os.path.splitext(n)[0] + ".safetensors"))) for n in GOOD]
    res = runner.run(pairs, EncodeJob(kw), workers=1, cpus_per_worker=1, gpus_per_worker=1, progress=False)
    assert res.counts == {"ok": 3, "skipped": 0, "failed": 0}, res.failed
    for name in GOOD:
        stem = os.path.splitext(name)[0] + ".safetensors"
        same_file(tmp_path / "out" / stem, tmp_path / "ref" / stem)


# ------------------------------------------------------------------------------------ label --ray
LABEL_VIDEOS = {"v0.mp4": (6, 96, 128), "v1.mp4": (3, 112, 112), "v2.mp4": (8, 80, 144)}


def _label(*args) -> int:
    from autogaze_ext.cli import main

    return main(["label", *map(str, args), "--clip-len", "4", "--device", "cpu", "--quiet"])


@pytest.fixture(scope="module")
def label_run(tmp_path_factory, ray_cluster):
    """The single-process label file of a folder (3 videos, a junk file failing the CPU check, a truncated
    video failing in the worker) and one `label --ray` run on it, 2 clips per actor call."""
    d = tmp_path_factory.mktemp("label")
    root = d / "data" / "train"
    root.mkdir(parents=True)
    for i, (name, (t, h, w)) in enumerate(LABEL_VIDEOS.items()):
        write_video(root / name, moving_objects_clip(t, h, w, seed=i))
    (root / "junk.mp4").write_bytes(b"not a video at all" * 10)
    cut = Path(write_video(d / "cut.mp4", moving_objects_clip(48, 96, 128, seed=4), faststart=True)).read_bytes()
    (root / "v0_cut.mp4").write_bytes(cut[: len(cut) // 5])  # its header opens, its first frame does not decode
    assert _label(d / "data", "--out", d / "ref.json") == 1
    t0 = time.perf_counter()
    rc = _label(d / "data", "--out", d / "labels.json", "--ray", "--cpus-per-gpu", 1, "--batch-rows", 2)
    return d, rc, time.perf_counter() - t0


def test_label_ray_equals_single_process(label_run):
    from autogaze_ext.training.labels import read_labels

    d, rc, _ = label_run
    assert rc == 1  # the two bad files
    assert (d / "labels.json").read_bytes() == (d / "ref.json").read_bytes()
    assert len(read_labels(d / "labels.json", clip_len=4)) == 3
    records = d / "labels.records"
    left = sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file())
    assert left == ["data/train/v0.mp4.json", "data/train/v1.mp4.json", "data/train/v2.mp4.json", "index.parquet"]
    rows = {os.path.basename(r["path"]): r for r in runner.read_index(str(records / "index.parquet"))}
    assert list(rows) == ["junk.mp4", "v0.mp4", "v0_cut.mp4", "v1.mp4", "v2.mp4"]  # input order
    data = json.loads((d / "labels.json").read_text())
    for name in LABEL_VIDEOS:
        r = rows[name]
        assert r["status"] == "ok" and r["error"] is None and r["frames"] == 4 and r["attempts"] == 1
        assert r["tokens"] == sum(map(len, data[r["path"]]["gazing_pos"]))
    assert rows["junk.mp4"]["status"] == "failed" and rows["junk.mp4"]["attempts"] == 0  # the CPU check
    assert "not a video" in rows["junk.mp4"]["error"]
    cut = rows["v0_cut.mp4"]  # in the worker, batched with another video that was labelled
    assert cut["status"] == "failed" and cut["attempts"] == 1 and "truncated" in cut["error"]


def test_label_ray_resumes(label_run, capsys):
    """Videos in the label file are skipped without Ray work, a record left by a run stopped before its merge
    is merged as it is, the rest is labelled; the file is again the single-process one, byte for byte."""
    from autogaze_ext.training.labels import write_labels

    d, _, _ = label_run
    out, rec = d / "labels.json", d / "labels.records" / "data" / "train"
    ref = json.loads((d / "ref.json").read_text())
    v0 = next(k for k in ref if k.endswith("v0.mp4"))
    write_labels(out, {v0: ref[v0]})
    (rec / "v2.mp4.json").unlink()
    stamp = (rec / "v1.mp4.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _label(d / "data", "--out", out, "--ray", "--cpus-per-gpu", 1, "--batch-rows", 2) == 1
    err = capsys.readouterr().err
    assert "4 video(s) to label, 1 already in" in err and "1 video(s) labelled, 2 skipped" in err, err
    assert "Traceback" not in err and "junk.mp4" in err and "v0_cut.mp4" in err
    assert out.read_bytes() == (d / "ref.json").read_bytes()
    assert (rec / "v1.mp4.json").stat().st_mtime_ns == stamp
    rows = {os.path.basename(r["path"]): r for r in runner.read_index(str(d / "labels.records" / "index.parquet"))}
    assert rows["v0.mp4"]["status"] == "skipped" and rows["v0.mp4"]["output"] == str(out)
    assert rows["v1.mp4"]["status"] == "skipped" and rows["v2.mp4"]["status"] == "ok"
    assert rows["v0_cut.mp4"]["status"] == "failed" and rows["junk.mp4"]["status"] == "failed"


def test_label_record_files(tmp_path):
    """Record names follow the label key (safe for any path or URI); a record made with other settings, or
    malformed, is not complete."""
    from autogaze_ext.scale import LabelJob

    f = str(tmp_path)
    assert LabelJob.record_path(f, "/x/data/train/a.mp4") == os.path.join(f, "data", "train", "a.mp4.json")
    assert LabelJob.record_path(f, "../../a.mp4") == os.path.join(f, "%2E%2E", "%2E%2E", "a.mp4.json")
    assert LabelJob.record_path(f, "https://h/d/s/a b.mp4?sig=1/") != LabelJob.record_path(f, "https://h/d/s/a b.mp4")
    job = LabelJob(max_error=0.3, clip_len=2)
    rec = {"gazing_pos": [[3], [265]], "task_losses": [[0.5], [0.25]]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"video": "a.mp4", "settings": job.settings(), "record": rec}))
    assert job.read(str(path)) == rec and job.completed(str(path)) == {"clips": 1, "frames": 2, "tokens": 2}
    assert LabelJob(max_error=0.2, clip_len=2).completed(str(path)) is None
    path.write_text(json.dumps({"video": "a.mp4", "settings": job.settings(), "record": {"gazing_pos": [[3]]}}))
    assert job.completed(str(path)) is None
    path.write_text('{"video": "a.mp4", "sett')
    assert job.completed(str(path)) is None


# ------------------------------------------------------------------------ no Ray needed from here on
def test_worker_attempt_limit_and_stale_staging(tmp_path):
    """A video whose worker already died max_attempts times is a failed row, not a fourth crash; a retried
    attempt removes what a killed one left and counts itself."""
    pytest.importorskip("pyarrow", reason="the index rows are Arrow tables")

    class Job(runner.VideoJob):
        def __init__(self):
            self.runs = 0

        def run(self, video, output):
            self.runs += 1
            Path(output).write_bytes(b"done")
            return {"clips": 1, "frames": 1, "tokens": 7}

        def completed(self, output):
            return {"clips": 1, "frames": 1, "tokens": 7} if Path(output).exists() else None

    out = tmp_path / "v.safetensors"
    w = runner._Worker(Job(), 1, False, 3, cuda=False)
    Path(runner._attempts_file(str(out))).write_text("3")
    row = w._one({"path": "v.mp4", "output": str(out), "status": "todo", "attempts": 0})
    assert row["status"] == "failed" and "died 3 times" in row["error"] and w.job.runs == 0
    stale = tmp_path / ".v.safetensors.0123456789ab.safetensors.partial"
    stale.write_bytes(b"x")
    Path(runner._attempts_file(str(out))).write_text("1")
    row = w._one({"path": "v.mp4", "output": str(out), "status": "todo", "attempts": 0})
    assert row["status"] == "ok" and row["attempts"] == 2 and row["tokens"] == 7
    assert sorted(os.listdir(tmp_path)) == ["v.safetensors"]
    row = w._one({"path": "v.mp4", "output": str(out), "status": "todo", "attempts": 0})  # a retried task
    assert row["status"] == "ok" and w.job.runs == 1


def test_worker_batches_until_a_worker_died(tmp_path):
    """A job with run_many gets the videos of one call together; after a worker died on that call (a live
    attempt counter) they go one at a time, and a failure fails only its own video."""
    pytest.importorskip("pyarrow", reason="the index rows are Arrow tables")
    import pyarrow as pa

    class Job(runner.VideoJob):
        suffix = ".txt"

        def __init__(self):
            self.calls = []

        def run_many(self, items):
            self.calls.append([os.path.basename(v) for v, _ in items])
            out = []
            for v, o in items:
                if "bad" in v:
                    out.append(ValueError(f"video: {v!r} is corrupt"))
                else:
                    Path(o).write_text(v)
                    out.append({"clips": 1, "frames": 1, "tokens": 1})
            return out

        def completed(self, output):
            return {"clips": 1, "frames": 1, "tokens": 1} if Path(output).exists() else None

    def batch(names):
        return pa.Table.from_pylist([{"index": i, "path": n, "output": str(tmp_path / (n + ".txt")), "status": "todo",
                                      "attempts": 0} for i, n in enumerate(names)])

    w = runner._Worker(Job(), 1, False, 3, cuda=False)
    rows = w(batch(["a", "bad", "c"])).to_pylist()
    assert w.job.calls == [["a", "bad", "c"]] and [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "is corrupt" in rows[1]["error"]
    Path(runner._attempts_file(str(tmp_path / "e.txt"))).write_text("1")
    rows = w(batch(["d", "e", "f"])).to_pylist()
    assert w.job.calls[1:] == [["d"], ["e"], ["f"]] and rows[1]["attempts"] == 2
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "c.txt", "d.txt", "e.txt", "f.txt"]


def test_manifests(tmp_path):
    v = tmp_path / "v"
    (v / "x").mkdir(parents=True)
    (v / "y").mkdir()
    for p in ("x/clip.mp4", "y/clip.mp4", "top.mkv"):
        (v / p).write_bytes(b"\0")
    out = str(tmp_path / "o")
    want = [(str(v / "x/clip.mp4"), os.path.join(out, "x/clip.safetensors")),
            (str(v / "y/clip.mp4"), os.path.join(out, "y/clip.safetensors"))]
    (tmp_path / "m.txt").write_text("# videos\n" + "\n".join(p for p, _ in want) + "\n\n")
    assert read_manifest(str(tmp_path / "m.txt"), out) == want
    (tmp_path / "m.csv").write_text("path,output\n" + f"{want[0][0]},first.safetensors\n{want[1][0]},\n")
    assert read_manifest(str(tmp_path / "m.csv"), out) == [(want[0][0], os.path.join(out, "first.safetensors")),
                                                             want[1]]
    assert expand_inputs([str(v / "**" / "clip.mp4")], out) == want  # glob: layout below its fixed folder
    assert sorted(expand_inputs([str(v)], out)) == sorted(want + [(str(v / "top.mkv"),
                                                                   os.path.join(out, "top.safetensors"))])
    uri = expand_inputs(["https://host/data/a/talk.mp4?sig=1"], out)
    assert uri == [("https://host/data/a/talk.mp4?sig=1", os.path.join(out, "talk.safetensors"))]
    pq = pytest.importorskip("pyarrow.parquet", reason="parquet manifests need pyarrow")
    import pyarrow as pa

    pq.write_table(pa.table({"path": [p for p, _ in want]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet"), out) == want
    for text, msg in [("", "lists no videos"), (str(tmp_path / "nope.mp4"), "not a file")]:
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_manifest(str(tmp_path / "bad.txt"), out)
    pq.write_table(pa.table({"file": ["a.mp4"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no 'path' column"):
        read_manifest(str(tmp_path / "bad.parquet"), out)
    (tmp_path / "clash.csv").write_text(f"path,output\n{want[0][0]},same.safetensors\n{want[1][0]},same.safetensors\n")
    with pytest.raises(ValueError, match="would both write"):
        read_manifest(str(tmp_path / "clash.csv"), out)
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ValueError, match=r"\.txt, \.csv or \.parquet"):
        read_manifest(str(tmp_path / "m.json"), out)


def test_without_ray(tmp_path):
    """`import autogaze_ext` (and its scale package) never imports Ray; --ray without Ray names the extra."""
    (tmp_path / "a.mp4").write_bytes(b"\0")
    code = ("import sys, autogaze_ext, autogaze_ext.scale, autogaze_ext.cli\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n"
            "sys.modules['ray'] = None  # as if it were not installed\n"
            f"sys.exit(autogaze_ext.cli.main(['encode', {str(tmp_path / 'a.mp4')!r}, '--out', "
            f"{str(tmp_path / 'o')!r}, '--ray', '--device', 'cpu']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "pip install 'autogaze_ext[ray]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
