"""End to end: a long 4K video file -> gazed SigLIP-B/16 features on disk, per stage, against the floors.

    python benchmarks/bench_e2e.py [--frames 1024] [--width 3840 --height 2160] [--precisions tf32 fp32]
                                   [--batch-size 256] [--video PATH] [--skip-dense] [--hwaccel]

The video is made here (cached at --video): textured objects moving over a static textured background with
a static inset, H.264 (libx264, preset veryfast, crf 23) through PyAV. Gaze model: the official fixture
checkpoint (seeded random weights) with gazing_ratio [0.75] + [0.0378] * 15 and no requirement, i.e. the
slot pattern of the released weights on real video (198 then 10 tokens per frame and tile). ViT: a random-init
SigLIP-B/16 (stock transformers, bf16, SDPA). In the same run:
  (c) decode alone   ClipReader (PyAV, background threads, pinned buffers), clips consumed and dropped
  (a) pipeline       Encoder.encode(video, file): decode, upload + preprocess, gaze, gazed ViT, write
  (b) dense          the same pipeline with the stock ViT on every tile-frame (no gaze, nothing written)
Each pipeline run is preceded by a warm-up encode of the first 32 frames (model load, CUDA graphs, cuBLAS
handles, pinned buffers); the first-run cost is printed too. Stage figures are busy times (CUDA events on
the GPU stages, thread time for decode and write); e2e is wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gaze import default_model_dir  # noqa: E402
from common import card_name, save_json  # noqa: E402

import autogaze_ext as ag  # noqa: E402
from autogaze_ext.pipeline.decode import ClipReader  # noqa: E402

RATIO = [0.75] + [0.0378] * 15


def make_video(path: str, frames: int, width: int, height: int, fps: int = 30) -> float:
    """Moving textured squares over a static textured background, a static inset; H.264. Returns seconds."""
    import av

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device="cpu").manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(height, device=dev, dtype=torch.float32),
                            torch.arange(width, device=dev, dtype=torch.float32), indexing="ij")
    bg = torch.stack([90 + 60 * xx / width, 110 + 40 * yy / height,
                      140 + 25 * torch.sin(xx / 23.0) * torch.cos(yy / 31.0)], -1)
    bg = bg + (torch.rand(height // 8, width // 8, 3, generator=g).to(dev) * 30).repeat_interleave(8, 0) \
        .repeat_interleave(8, 1)[:height, :width]
    n_obj, size = 10, max(32, min(height, width) // 6)
    pos = torch.rand(n_obj, 2, generator=g) * torch.tensor([height - size, width - size])
    vel = (torch.rand(n_obj, 2, generator=g) - 0.5) * min(height, width) / 60
    col = torch.rand(n_obj, 3, generator=g) * 200 + 40
    oy, ox = torch.meshgrid(torch.arange(size, device=dev), torch.arange(size, device=dev), indexing="ij")
    tex = (0.6 + 0.4 * ((oy // 12 + ox // 12) % 2)).float()
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        s.codec_context.thread_count = 0
        for t in range(frames):
            img = bg.clone()
            for k in range(n_obj):
                y, x = int(pos[k, 0]), int(pos[k, 1])
                img[y:y + size, x:x + size] = col[k].to(dev) * tex[..., None]
            pos += vel
            for d, lim in ((0, height - size), (1, width - size)):
                hit = (pos[:, d] < 0) | (pos[:, d] > lim)
                vel[hit, d] *= -1
                pos[:, d] = pos[:, d].clamp(0, lim)
            frame = img.clamp(0, 255).to(torch.uint8).cpu().numpy()
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return time.perf_counter() - t0


def decode_alone(path: str, hwaccel: str | None = None) -> dict:
    t0 = time.perf_counter()
    reader = ClipReader(path, 16, buffers=3, pinned=torch.cuda.is_available(), hwaccel=hwaccel)
    n = 0
    for clip in reader:
        n += clip.real
        clip.release()
    return {"wall_s": time.perf_counter() - t0, "busy_s": reader.stats["decode_s"], "frames": n}


def vit_stream_check(enc, reps: int = 6) -> dict:
    """The gazed ViT on batches of varying token totals (random gazes of 0.5..1x the pipeline's slot pattern):
    per-call ms with graphs forced on (one capture per new bucket) and eager (the pipeline's default above
    GazedViT.GRAPH_MAX_ROWS rows)."""
    from autogaze_ext.vit.model import GazedViT

    dev = enc.device
    B, T, V = min(enc.batch_size, 256), 16, 265
    video = torch.randn(B, T, 3, 224, 224, device=dev)
    g = torch.Generator().manual_seed(0)
    out = {}
    for label, graphs in (("graphs", True), ("eager", False)):
        vit = GazedViT(enc.vit.model, cuda_graphs=graphs)
        times = []
        for i in range(reps):
            k = [int(198 * (0.5 + 0.5 * torch.rand(1, generator=g)))] + [10] * 15
            pos = torch.cat([torch.randperm(V, generator=g)[:k[t]] + V * t for t in range(T)])
            gaze = {"gazing_pos": pos.repeat(B, 1).to(dev), "if_padded_gazing": torch.zeros(B, sum(k), dtype=torch.bool,
                                                                                              device=dev),
                    "num_gazing_each_frame": torch.tensor(k, device=dev)}
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            vit(video, gaze=gaze, validate=False)
            torch.cuda.synchronize()
            times.append(round((time.perf_counter() - t0) * 1e3, 1))
        out[label] = times
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--width", type=int, default=3840)
    ap.add_argument("--height", type=int, default=2160)
    ap.add_argument("--video", default=None, help="video file (made if missing)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--precisions", nargs="*", default=["tf32", "fp32"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--hwaccel", action="store_true", help="also time decode alone with NVDEC (PyAV hwaccel cuda)")
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    card = card_name()
    print(f"card: {card}; torch {torch.__version__}; cpus {os.cpu_count()}")
    tmp = tempfile.mkdtemp(prefix="bench_e2e_")
    video = args.video or os.path.join(tmp, f"synthetic_{args.width}x{args.height}_{args.frames}.mp4")
    res: dict = {"card": card, "torch": torch.__version__, "frames": args.frames,
                 "size": [args.width, args.height], "ratio": "0.75 then 0.0378 (198 then 10 slots)"}
    if not os.path.isfile(video):
        res["make_video_s"] = make_video(video, args.frames, args.width, args.height)
        print(f"made {video}: {os.path.getsize(video) / 2**20:.1f} MiB in {res['make_video_s']:.1f} s")
    res["video_mib"] = os.path.getsize(video) / 2**20

    res["decode_alone"] = decode_alone(video)
    print(f"(c) decode alone: {res['decode_alone']}")
    if args.hwaccel:
        try:
            res["decode_alone_nvdec"] = decode_alone(video, "cuda")
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            res["decode_alone_nvdec"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"(c') decode alone, NVDEC: {res['decode_alone_nvdec']}")

    model_dir = args.model or default_model_dir()
    runs = {}
    for prec in args.precisions:
        t0 = time.perf_counter()
        enc = ag.Encoder(str(model_dir), None, device="cuda" if cuda else "cpu", gazing_ratio=RATIO, precision=prec,
                         batch_size=args.batch_size, fsync=not args.no_fsync)
        warm = enc.encode(video, os.path.join(tmp, "warm.safetensors"), max_frames=min(32, args.frames))
        first = time.perf_counter() - t0
        out = os.path.join(tmp, f"features_{prec}.safetensors")
        r = enc.encode(video, out)
        runs[prec] = {**r.as_dict(), "first_run_setup_s": round(first, 2), "warm_tokens": warm.tokens,
                      "file_gib": os.path.getsize(out) / 2**30, "batch_size": enc.batch_size}
        f = ag.load_features(out)
        assert f.total_tokens == r.tokens and f.num_clips == r.clips
        os.unlink(out)
        print(f"(a) pipeline {prec}: e2e {r.seconds:.2f} s, stages {runs[prec]['stages_s']}, "
              f"{r.tokens:,} tokens ({100 * r.kept_fraction:.2f}%), peak GPU {r.peak_gpu_mib or 0:.0f} MiB, "
              f"RSS {r.peak_rss_mib:.0f} MiB; first-run setup {first:.1f} s")
    res["pipeline"] = runs
    if cuda:
        res["vit_stream_ms"] = vit_stream_check(enc)
        print(f"gazed ViT, batches of varying token totals (ms per call): {res['vit_stream_ms']}")
    if not args.skip_dense:
        enc_d = ag.Encoder(str(model_dir), enc.vit, device="cuda" if cuda else "cpu", gazing_ratio=RATIO,
                           batch_size=args.batch_size, dense=True)
        enc_d.encode(video, None, max_frames=32)
        d = enc_d.encode(video, None)
        res["dense"] = d.as_dict()
        print(f"(b) dense: e2e {d.seconds:.2f} s, stages {res['dense']['stages_s']}")

    print(f"\ncard: {card}; {args.frames} frames {args.width}x{args.height}, {res['video_mib']:.0f} MiB H.264")
    dec = res["decode_alone"]["wall_s"]
    print(f"{'run':<14} {'e2e s':>7} {'decode':>7} {'upload':>7} {'prep':>6} {'gaze':>7} {'vit':>7} {'write':>6} "
          f"{'GPU sum':>8} {'e2e/max':>8} {'GPU MiB':>8} {'RSS MiB':>8}")
    table = []
    for name, r in [*((f"(a) {p}", v) for p, v in runs.items()), *([("(b) dense", res["dense"])]
                                                                    if "dense" in res else [])]:
        st = r["stages_s"]
        gpu = sum(st.get(k, 0.0) for k in ("preprocess", "gaze", "vit"))
        ratio = r["seconds"] / max(dec, gpu)
        table.append({"run": name, "e2e_s": r["seconds"], "gpu_stages_s": gpu, "e2e_over_max": ratio})
        print(f"{name:<14} {r['seconds']:7.2f} {st.get('decode', 0):7.2f} {st.get('upload', 0):7.2f} "
              f"{st.get('preprocess', 0):6.2f} {st.get('gaze', 0):7.2f} {st.get('vit', 0):7.2f} {st.get('write', 0):6.2f} "
              f"{gpu:8.2f} {ratio:8.2f} {r['peak_gpu_mib'] or 0:8.0f} {r['peak_rss_mib']:8.0f}")
    print(f"(c) decode alone: {dec:.2f} s wall ({res['decode_alone']['frames']} frames, "
          f"{res['decode_alone']['frames'] / dec:.1f} frames/s)")
    if "dense" in res:
        for p, r in runs.items():
            f = r["kept_fraction"]
            speed = res["dense"]["stages_s"]["vit"] / max(r["stages_s"]["vit"], 1e-9)
            print(f"gazed ViT stage ({p}) vs dense: {speed:.1f}x at kept fraction {f:.4f} "
                  f"(target >= 0.8/f = {0.8 / f:.1f}x)")
            res.setdefault("vit_speedup", {})[p] = speed
    res["table"] = table
    save_json("bench_e2e.json", res)
    print(json.dumps({"table": table}, default=str))


if __name__ == "__main__":
    main()
