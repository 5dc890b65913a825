"""Bad inputs of the user-facing API: ``generate`` (and the official call style), checkpoint and config loading,
streaming state, split_clips and the greedy gazer. A tiny AutoGaze (2 scales, 5 tokens per frame, 32 px frames)
keeps every case at a few milliseconds."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch

import autogaze_ext as ag
from autogaze_ext.config import released_config_dict
from autogaze_ext.greedy import GreedyGazer

from .case import Case


def tiny_config() -> dict:
    """A small AutoGaze config: scales 16+32 (grids 1 and 2, 5 tokens per frame), 32 px frames, 2 decoder layers
    of 16 channels, 2 heads over 1 kv head, 2 tokens per decode step."""
    d = released_config_dict()
    d.update(scales="16+32", num_vision_tokens_each_frame=5)
    gm = d["gaze_model_config"]
    gm.update(input_img_size=32, num_vision_tokens_each_frame=5)
    gm["vision_model_config"].update(hidden_dim=16, out_dim=16)
    gm["connector_config"].update(hidden_dim=16, num_tokens=4)
    gm["gaze_decoder_config"].update(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_multi_token_pred=2)
    return d


def tiny_model(seed: int = 0) -> ag.AutoGaze:
    torch.manual_seed(seed)
    model = ag.AutoGaze(ag.AutoGazeConfig.from_dict(tiny_config()))
    with torch.no_grad():  # predicted losses spread around the requirements used below (some frames stop early)
        model.gazing_model.gaze_decoder.task_loss_prediction_head.weight.normal_(0, 0.5)
    return model


class Context:
    """What the cases share, made once in the parent before it forks: the tiny model (CPU) and its checkpoint."""

    def __init__(self, device: str, tmp: str):
        self.device = torch.device(device)
        self.tmp = tmp
        self._model = tiny_model()
        self.ckpt = os.path.join(tmp, "ckpt")
        self._model.save_pretrained(self.ckpt)

    def model(self) -> ag.AutoGaze:
        return self._model.to(self.device)  # the child's own copy of the parent's memory: free to change

    def video(self, B: int = 1, T: int = 3, seed: int = 0, side: int = 32) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(B, T, 3, side, side, generator=g).to(self.device)

    def checkpoint(self, edit_config=None) -> str:
        """A fresh copy of the tiny checkpoint, its config.json edited by edit_config(dict) when given."""
        path = tempfile.mkdtemp(dir=self.tmp)
        shutil.copytree(self.ckpt, path, dirs_exist_ok=True)
        if edit_config is not None:
            file = os.path.join(path, "config.json")
            with open(file) as f:
                cfg = json.load(f)
            edit_config(cfg)
            with open(file, "w") as f:
                json.dump(cfg, f)
        return path


def _ids(out) -> list:
    return [t.cpu() for t in (out.gazing_pos, out.if_padded_gazing, out.num_gazing_each_frame)]


def _same_ids(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_ids(a), _ids(b)))


# ------------------------------------------------------------------------------------------- generate

def _generate_cases() -> list[Case]:
    cases = []

    def bad(name, kwargs_fn, names, also=(), video_fn=None):
        def run(ctx):
            video = ctx.video() if video_fn is None else video_fn(ctx)
            ctx.model().generate(video, **kwargs_fn(ctx))
        cases.append(Case(f"generate/{name}", run, "error", names, also))

    def same(name, kwargs_fn, ref_kwargs, video_fn=None, ref_video_fn=None):
        """A valid argument (numpy scalar, tensor, other float dtype): the ids of the plain Python spelling."""
        def run(ctx):
            video = ctx.video() if video_fn is None else video_fn(ctx)
            ref_video = video if ref_video_fn is None else ref_video_fn(ctx)
            m = ctx.model()
            return _same_ids(m.generate(video, **kwargs_fn(ctx)), m.generate(ref_video, **ref_kwargs))
        cases.append(Case(f"generate/{name}", run, "ok"))

    for label, fn in [("list", lambda c: c.video().tolist()), ("int", lambda c: c.video().long()),
                      ("4d", lambda c: c.video()[0]), ("channels", lambda c: c.video()[:, :, :2]),
                      ("empty_T", lambda c: c.video()[:, :0]), ("empty_B", lambda c: c.video()[:0]),
                      ("meta", lambda c: c.video().to("meta")), ("17_frames", lambda c: c.video(T=17)),
                      ("complex", lambda c: c.video().to(torch.complex64))]:
        bad(f"video:{label}", lambda c: {}, ("video",), video_fn=fn)
    for label, value in [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]:
        def poisoned(c, value=value):
            v = c.video()
            v[0, 1, 2, 3, 4] = value
            return v
        bad(f"video:{label}", lambda c: {}, ("video",), ("NaN or Inf",), video_fn=poisoned)
    for label, value in [("0", 0), ("neg", -0.5), ("big", 1.5), ("nan", math.nan), ("inf", math.inf), ("str", "0.5"),
                         ("short_list", [0.5, 0.5]), ("nested", [[0.5] * 3]), ("bool", True), ("dict", {})]:
        bad(f"gazing_ratio={label}", lambda c, value=value: {"gazing_ratio": value}, ("gazing_ratio",))
    for label, value in [("nan", math.nan), ("neg", -1.0), ("inf", math.inf), ("str", "x"), ("bool", True),
                         ("shape", torch.full((1, 4), 0.5)), ("nan_tensor", torch.full((1, 3), math.nan))]:
        bad(f"task_loss_requirement={label}", lambda c, value=value: {"gazing_ratio": 0.5,
                                                                       "task_loss_requirement": value},
            ("task_loss_requirement",))
    sampling = {"do_sample": True, "seed": 0, "gazing_ratio": 0.6}
    for label, value in [("neg", -1), ("str", "x"), ("float", 2.5), ("bool", True)]:
        bad(f"top_k={label}", lambda c, value=value: {**sampling, "top_k": value}, ("top_k",))
    for label, value in [("inf", math.inf), ("nan", math.nan), ("0", 0.0), ("neg", -1.0), ("str", "x")]:
        bad(f"temperature={label}", lambda c, value=value: {**sampling, "temperature": value}, ("temperature",))
    for label, value in [("str", "abc"), ("float", 1.5), ("huge", 2**70), ("bool", True)]:
        bad(f"seed={label}", lambda c, value=value: {**sampling, "seed": value}, ("seed",))
    for arg, value in [("generator", "x"), ("do_sample", "yes"), ("cached", "no"), ("return_state", 1),
                       ("margins", "x"), ("backend", "bogus"), ("backend", None), ("precision", "fp16"),
                       ("check_finite", "no"), ("state", {}), ("state", "s")]:
        bad(f"{arg}={value!r}", lambda c, arg=arg, value=value: {arg: value}, (arg,))
    bad("backend=fast_with_sampling", lambda c: {**sampling, "backend": "fast"}, ("backend",))
    # target-scale adaptation (the tiny model: 2 scales)
    for label, kw in [("one_scale", {"target_scales": [28], "target_patch_size": 14}),
                      ("descending", {"target_scales": [28, 14], "target_patch_size": 14}),
                      ("strings", {"target_scales": ["a", "b"], "target_patch_size": 14}),
                      ("below_patch", {"target_scales": [7, 28], "target_patch_size": 14})]:
        bad(f"target_scales:{label}", lambda c, kw=kw: kw, ("target_scales",), video_fn=lambda c: c.video(side=28))
    for label, value in [("0", 0), ("str", "x"), ("bool", True), ("float", 14.5)]:
        bad(f"target_patch_size={label}", lambda c, value=value: {"target_scales": [14, 28],
                                                                   "target_patch_size": value},
            ("target_patch_size",), video_fn=lambda c: c.video(side=28))
    bad("target_scales_without_patch", lambda c: {"target_scales": [14, 28]}, ("target_patch_size",))
    bad("target_scales:video_side", lambda c: {"target_scales": [14, 28], "target_patch_size": 14}, ("video",))
    bad("target_scales:streaming", lambda c: {"target_scales": [14, 28], "target_patch_size": 14,
                                              "return_state": True}, ("target_scales",),
        video_fn=lambda c: c.video(side=28))

    def weights(value):
        def run(ctx):
            m = ctx.model()
            with torch.no_grad():
                m.gazing_model.gaze_decoder.model.layers[1].mlp.up_proj.weight[0, 0] = value
            m.generate(ctx.video(), gazing_ratio=0.6)
        return run
    for value in (math.nan, math.inf):
        cases.append(Case(f"generate/weights={value}", weights(value), "error", ("weights",), ("NaN or Inf",)))

    def weights_changed_after_a_call(ctx):  # the check is cached per weights version, not once for all
        m = ctx.model()
        m.generate(ctx.video(), gazing_ratio=0.6)
        with torch.no_grad():
            m.gazing_model.connector.pos_embed[0, 0] = math.nan
        m.generate(ctx.video(), gazing_ratio=0.6)
    cases.append(Case("generate/weights_nan_after_a_call", weights_changed_after_a_call, "error", ("weights",)))

    def opt_out(ctx):
        v = ctx.video()
        v[0, 0, 0, 0, 0] = math.nan
        out = ctx.model().generate(v, gazing_ratio=0.6, check_finite=False)
        return out.gazing_pos.shape[0] == 1  # explicitly accepted: no check, no error
    cases.append(Case("generate/check_finite=False", opt_out, "ok"))

    base = {"gazing_ratio": 0.6}
    same("gazing_ratio=np.float32", lambda c: {"gazing_ratio": np.float32(0.6)}, base)
    same("gazing_ratio=np.float64", lambda c: {"gazing_ratio": np.float64(0.6)}, base)
    same("gazing_ratio=np.array", lambda c: {"gazing_ratio": np.full(3, 0.6, dtype=np.float32)}, base)
    same("gazing_ratio=tensor", lambda c: {"gazing_ratio": torch.tensor(0.6)}, base)
    same("gazing_ratio=tensor_list", lambda c: {"gazing_ratio": torch.full((3,), 0.6)}, base)
    same("task_loss_requirement=np.float32", lambda c: {**base, "task_loss_requirement": np.float32(0.5)},
         {**base, "task_loss_requirement": float(np.float32(0.5))})
    same("top_k=np.int64", lambda c: {**sampling, "top_k": np.int64(3)}, {**sampling, "top_k": 3})
    same("seed=np.int64", lambda c: {**sampling, "seed": np.int64(0)}, sampling)
    same("video=float64", lambda c: base, base, video_fn=lambda c: c.video().double(), ref_video_fn=lambda c: c.video())
    same("target_scales=np", lambda c: {**base, "target_scales": np.array([14, 28]), "target_patch_size": np.int64(14)},
         {**base, "target_scales": [14, 28], "target_patch_size": 14}, video_fn=lambda c: c.video(side=28))

    def official_style(kw, names):
        def run(ctx):
            ctx.model()(**kw(ctx))
        return run
    cases.append(Case("generate/forward:inputs_not_dict", official_style(
        lambda c: {"inputs": c.video(), "generate_only": True}, None), "error", ("inputs",)))
    cases.append(Case("generate/forward:past_key_values", official_style(
        lambda c: {"inputs": {"video": c.video()}, "generate_only": True, "use_cache": True,
                   "past_key_values": ({}, {})}, None), "error", ("past_key_values",)))

    def config_default_ratio(value):
        def run(ctx):
            cfg = tiny_config()
            cfg["gazing_ratio_config"]["fixed"]["gazing_ratio"] = value
            ag.AutoGaze(ag.AutoGazeConfig.from_dict(cfg)).generate(ctx.video().cpu())
        return run
    for value in (2.0, "x", -1.0, math.nan):
        cases.append(Case(f"generate/config_default_ratio={value!r}", config_default_ratio(value), "error",
                          ("gazing_ratio",), devices=("cpu",)))
    return cases


# ------------------------------------------------------------------------------------------- loading

DEC = ("gaze_model_config", "gaze_decoder_config")
VIS = ("gaze_model_config", "vision_model_config")
CONFIG_EDITS = [  # (path, value): every field the model reads, set to something it cannot use
    (("scales",), "16+abc"), (("scales",), ""), (("scales",), None), (("scales",), ["16", "32"]),
    (("scales",), "0+16"), (("scales",), 5), (("scales",), "8+32"),
    (("num_vision_tokens_each_frame",), None), (("num_vision_tokens_each_frame",), "5"),
    (("num_vision_tokens_each_frame",), -1), (("num_vision_tokens_each_frame",), 5.5),
    (("num_vision_tokens_each_frame",), True), (("num_vision_tokens_each_frame",), 7),
    (("max_num_frames",), 0), (("max_num_frames",), "16"), (("gaze_model_config",), None),
    (("gaze_model_config",), []), (("gaze_model_config", "input_img_size"), 0),
    (("gaze_model_config", "input_img_size"), "32"), (VIS, "x"),
    (VIS + ("hidden_dim",), 0), (VIS + ("out_dim",), 7), (VIS + ("depth",), 0), (VIS + ("kernel_size",), 0),
    (VIS + ("kernel_size",), 64), (VIS + ("temporal_patch_size",), 2), (VIS + ("trunk_temporal_kernel_size",), 0),
    (VIS + ("trunk_spatial_kernel_size",), 2), (VIS + ("trunk_spatial_kernel_size",), "3"),
    (DEC, None), (DEC + ("hidden_size",), 0), (DEC + ("hidden_size",), None), (DEC + ("hidden_size",), "16"),
    (DEC + ("intermediate_size",), 0), (DEC + ("num_hidden_layers",), 0), (DEC + ("num_attention_heads",), 0),
    (DEC + ("num_key_value_heads",), 3), (DEC + ("head_dim",), 7), (DEC + ("head_dim",), 0),
    (DEC + ("rms_norm_eps",), -1e-5), (DEC + ("rms_norm_eps",), 0), (DEC + ("rms_norm_eps",), math.nan),
    (DEC + ("rms_norm_eps",), "1e-5"), (DEC + ("rope_theta",), 0), (DEC + ("rope_theta",), -1.0),
    (DEC + ("rope_theta",), math.inf), (DEC + ("rope_scaling",), "x"), (DEC + ("rope_scaling",), {"rope_type": "yarn"}),
    (DEC + ("rope_scaling", "factor"), 0), (DEC + ("rope_scaling", "high_freq_factor"), 0.5),
    (DEC + ("rope_scaling", "original_max_position_embeddings"), None),
    (DEC + ("num_multi_token_pred",), 0), (DEC + ("top_k",), -1), (DEC + ("top_k",), [50]),
]


def _set(cfg: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        cfg = cfg[k]
    cfg[path[-1]] = value


def _loading_cases() -> list[Case]:
    cases = []

    def add(name, run, expect="error", names=(), also=()):
        cases.append(Case(f"load/{name}", run, expect, names, also, devices=("cpu",)))

    for path, value in CONFIG_EDITS:
        field = path[-1] if path[-1] != "rope_type" else "rope_scaling"
        names = (field, "rope_scaling") if "rope_scaling" in path else (field,)
        if field == "num_vision_tokens_each_frame" and value == 7:
            names = ("scales",)  # 7 tokens do not split over the scales 16+32
        add(f"config:{'.'.join(path)}={value!r:.20}",
            lambda ctx, path=path, value=value: ag.AutoGaze.from_pretrained(
                ctx.checkpoint(lambda cfg: _set(cfg, path, value))), names=names, also=("config.json",))

    def write(rel: str, data: bytes | str, remove: tuple = ()):
        def make(ctx):
            p = ctx.checkpoint()
            for r in remove:
                os.remove(os.path.join(p, r))
            with open(os.path.join(p, rel), "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            return p
        return make

    def load(make, **kw):
        return lambda ctx: ag.AutoGaze.from_pretrained(make(ctx), **kw)

    add("config:binary", load(write("config.json", bytes(range(256)) * 4)), names=("config.json",))
    add("config:list", load(write("config.json", "[1, 2]")), names=("config.json",))
    add("config:empty", load(write("config.json", "")), names=("config.json",))
    add("config:truncated", load(write("config.json", '{"scales": "16+32", ')), names=("config.json",))
    add("config:missing", load(lambda ctx: (p := ctx.checkpoint(), os.remove(os.path.join(p, "config.json")), p)[2]),
        names=("config.json",))
    add("weights:truncated", load(write("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{")),
        names=("model.safetensors",))
    add("weights:missing", load(lambda ctx: (p := ctx.checkpoint(), os.remove(os.path.join(p, "model.safetensors")),
                                            p)[2]), names=("model.safetensors",))

    def weights_edit(edit):
        def make(ctx):
            from safetensors.torch import load_file, save_file

            p = ctx.checkpoint()
            file = os.path.join(p, "model.safetensors")
            sd = load_file(file)
            edit(sd)
            save_file(sd, file)
            return p
        return make
    key = "gazing_model.gaze_decoder.model.layers.0.mlp.up_proj.weight"
    add("weights:nan", load(weights_edit(lambda sd: sd[key].view(-1).__setitem__(0, math.nan))), names=(key,),
        also=("NaN or Inf",))
    add("weights:inf", load(weights_edit(lambda sd: sd[key].view(-1).__setitem__(3, -math.inf))), names=(key,))
    add("weights:shape", load(weights_edit(lambda sd: sd.__setitem__(key, sd[key][:-1].clone()))), names=(key,))
    add("weights:dtype_int", load(weights_edit(lambda sd: sd.__setitem__(key, sd[key].long()))), names=(key,))
    add("weights:missing_key", load(weights_edit(lambda sd: sd.pop(key))), names=("missing",))
    add("weights:extra_key", load(weights_edit(lambda sd: sd.__setitem__("gazing_model.extra", torch.zeros(1)))),
        names=("unexpected",))
    index = "model.safetensors.index.json"
    for label, content in [("no_weight_map", {"metadata": {}}), ("weight_map_list", {"weight_map": ["a"]}),
                           ("escaping_shard", {"weight_map": {key: "../model.safetensors"}}),
                           ("not_json", None)]:
        add(f"index:{label}", load(write(index, "{oops" if content is None else json.dumps(content),
                                         remove=("model.safetensors",))), names=("weight_map", index))
    add("index:shard_missing", load(write(index, json.dumps({"weight_map": {key: "part-1.safetensors"}}),
                                          remove=("model.safetensors",))), names=("part-1.safetensors",))
    add("path:weights_file", lambda ctx: ag.AutoGaze.from_pretrained(os.path.join(ctx.checkpoint(),
                                                                                  "model.safetensors")),
        names=("model.safetensors",))
    add("path:config_file", lambda ctx: ag.AutoGaze.from_pretrained(os.path.join(ctx.checkpoint(), "config.json")),
        names=("config.json",))
    add("path:nonexistent", lambda ctx: ag.AutoGaze.from_pretrained(os.path.join(ctx.tmp, "no", "such", "dir")),
        names=("such",))
    add("path:int", lambda ctx: ag.AutoGaze.from_pretrained(3), names=("checkpoint",))
    add("path:none", lambda ctx: ag.AutoGaze.from_pretrained(None), names=("checkpoint",))
    add("revision:int", lambda ctx: ag.AutoGaze.from_pretrained(ctx.checkpoint(), revision=3), names=("revision",))
    for arg, value in [("torch_dtype", "float8"), ("torch_dtype", "abc"), ("torch_dtype", torch.int8),
                       ("torch_dtype", 3), ("dtype", "int32"), ("device", "tpu"), ("device", 1.5),
                       ("device", "cuda:99")]:
        if value == "cuda:99" and torch.cuda.is_available():
            continue
        add(f"{arg}={value!r}", lambda ctx, arg=arg, value=value: ag.AutoGaze.from_pretrained(
            ctx.checkpoint(), **{arg: value}), names=(arg,))
    add("torch_dtype_and_dtype", lambda ctx: ag.AutoGaze.from_pretrained(ctx.checkpoint(), torch_dtype="float32",
                                                                         dtype="float32"), names=("dtype",))

    def loads_as(want: torch.dtype, **kw):
        def run(ctx):
            m = ag.AutoGaze.from_pretrained(ctx.checkpoint(), **kw)
            ref = ctx.model().cpu()
            return m.dtype == want and all(torch.equal(a.to(want), b) for a, b in
                                           zip(ref.parameters(), m.parameters()))
        return run
    add("torch_dtype=bfloat16", loads_as(torch.bfloat16, torch_dtype="bfloat16"), "ok")
    add("torch_dtype=torch.float64", loads_as(torch.float64, torch_dtype=torch.float64), "ok")
    add("torch_dtype=auto", loads_as(torch.float32, torch_dtype="auto"), "ok")
    add("dtype=torch.float16", loads_as(torch.float16, dtype="torch.float16"), "ok")
    add("device=torch.device", loads_as(torch.float32, device=torch.device("cpu")), "ok")
    add("config:numbers_as_floats", lambda ctx: ag.AutoGaze.from_pretrained(ctx.checkpoint(
        lambda cfg: _set(cfg, DEC + ("hidden_size",), 16.0))).config.decoder.hidden_size == 16, "ok")

    def config_from_dict(value, names):
        add(f"config_from_dict:{value!r:.20}", lambda ctx: ag.AutoGazeConfig.from_dict(value), names=names)
    config_from_dict([1], ("config",))
    config_from_dict({}, ("scales",))
    add("config_from_dict:numpy_numbers", lambda ctx: ag.AutoGazeConfig.from_dict(
        {**tiny_config(), "num_vision_tokens_each_frame": np.int64(5)}).num_vision_tokens_each_frame == 5, "ok")
    return cases


# ------------------------------------------------------------------------------------------- streaming

def _stream(model, video, state=None, **kw):
    kw.setdefault("gazing_ratio", 0.6)
    kw.setdefault("task_loss_requirement", 0.4)
    return model.generate(video, state=state, return_state=True, **kw)


def _streaming_cases() -> list[Case]:
    cases = []

    def add(name, run, expect="ok", names=(), also=()):
        cases.append(Case(f"stream/{name}", run, expect, names, also))

    def retry_same(cached):
        def run(ctx):
            m, v = ctx.model(), ctx.video(T=3)
            _, s1 = _stream(m, v[:, :1], cached=cached)
            seen = s1.frames_seen
            a, _ = _stream(m, v[:, 1:2], s1, cached=cached)
            b, _ = _stream(m, v[:, 1:2], s1, cached=cached)  # a retry from the same state: the same result
            return _same_ids(a, b) and s1.frames_seen == seen
        return run
    add("retry_gives_the_same_result", retry_same(True))
    add("retry_gives_the_same_result_uncached", retry_same(False))

    def failed_call_leaves_state(make_failure):
        def run(ctx):
            m, v = ctx.model(), ctx.video(T=2)
            _, s1 = _stream(m, v[:, :1])
            want, _ = _stream(m, v[:, 1:2], s1)
            try:
                make_failure(m, v, s1)
            except (ValueError, RuntimeError):
                pass
            else:
                return False
            got, _ = _stream(m, v[:, 1:2], s1)
            return _same_ids(got, want) and s1.frames_seen == 1
        return run

    def nan_frame(m, v, s):
        bad = v[:, 1:2].clone()
        bad[..., 0] = math.nan
        _stream(m, bad, s)

    def fails_mid_decode(m, v, s):
        """The decoder raises at its third call: after the prefill and a step have advanced the (forked) state."""
        dec = m.gazing_model.gaze_decoder
        calls = {"n": 0}
        original = dec.forward

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected failure")
            return original(*a, **k)
        dec.forward = flaky
        try:
            _stream(m, v[:, 1:2], s, gazing_ratio=1.0, task_loss_requirement=None)
        finally:
            dec.forward = original
    add("failed_call_nan_frame_leaves_state", failed_call_leaves_state(nan_frame))
    add("failed_call_mid_decode_leaves_state", failed_call_leaves_state(fails_mid_decode))
    add("failed_call_bad_ratio_leaves_state", failed_call_leaves_state(
        lambda m, v, s: _stream(m, v[:, 1:2], s, gazing_ratio=2.0)))

    def equals_static(ctx):
        m, v = ctx.model(), ctx.video(T=3)
        static = m.generate(v, gazing_ratio=0.6, task_loss_requirement=0.4)
        s, parts = None, []
        for t in range(3):
            o, s = _stream(m, v[:, t:t + 1], s)
            parts.append(o.gazing_pos + 5 * t)
        return torch.equal(torch.cat(parts, 1).cpu(), static.gazing_pos.cpu())
    add("stream_equals_static", equals_static)

    def state_batch(ctx):
        m = ctx.model()
        _, s = _stream(m, ctx.video(B=1, T=1))
        _stream(m, ctx.video(B=2, T=1), s)
    add("state_other_batch", state_batch, "error", ("state",))

    def state_cached_mode(ctx):
        m = ctx.model()
        _, s = _stream(m, ctx.video(T=1))
        _stream(m, ctx.video(T=1), s, cached=False)
    add("state_other_cached_mode", state_cached_mode, "error", ("cached",))

    def too_long(ctx):
        m, s = ctx.model(), None
        for _ in range(17):
            _, s = _stream(m, ctx.video(T=1), s)
    add("past_16_frames", too_long, "error", ("video",))

    def greedy_retry(ctx):
        gz, v = GreedyGazer(), ctx.video(T=2, side=224)
        _, s = gz.generate(v[:, :1], gazing_ratio=0.05, return_state=True)
        before = s["recon"].clone()
        a = gz.generate(v[:, 1:], gazing_ratio=0.05, state=s)
        b = gz.generate(v[:, 1:], gazing_ratio=0.05, state=s)
        return _same_ids(a, b) and torch.equal(before, s["recon"])
    add("greedy_retry_gives_the_same_result", greedy_retry)
    add("greedy_state_wrong_type", lambda ctx: GreedyGazer().generate(ctx.video(T=1, side=224), state={"x": 1}),
        "error", ("state",))
    add("greedy_nan_video", lambda ctx: GreedyGazer().generate(ctx.video(T=1, side=224) * math.nan), "error",
        ("video",))
    add("greedy_ratio_numpy", lambda ctx: _same_ids(
        GreedyGazer().generate(ctx.video(T=1, side=224), gazing_ratio=np.float32(0.05)),
        GreedyGazer().generate(ctx.video(T=1, side=224), gazing_ratio=float(np.float32(0.05)))))
    return cases


def _clip_cases() -> list[Case]:
    cases = []
    for label, value in [("0", 0), ("neg", -1), ("str", "4"), ("bool", True), ("float", 2.5)]:
        cases.append(Case(f"clips/clip_len={label}", lambda ctx, value=value: ag.split_clips(ctx.video(T=5), value),
                          "error", ("clip_len",)))
    cases.append(Case("clips/video=list", lambda ctx: ag.split_clips([[1, 2]], 2), "error", ("video",)))
    cases.append(Case("clips/pad_last=str", lambda ctx: ag.split_clips(ctx.video(T=5), 2, "no"), "error",
                      ("pad_last",)))
    cases.append(Case("clips/clip_len=np.int64", lambda ctx: ag.split_clips(ctx.video(T=5), np.int64(2))[1] == 3,
                      "ok"))
    return cases


def api_cases() -> list[Case]:
    return _generate_cases() + _loading_cases() + _streaming_cases() + _clip_cases()
