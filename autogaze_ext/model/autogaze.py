"""The AutoGaze model: official module layout, checkpoint format and ``generate`` behaviour."""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._common import check_bool
from ..ops.decoder import DecoderOps
from ..config import AutoGazeConfig
from ..hub import CHECKPOINT_PATTERNS, describe_pretrained, resolve_pretrained
from . import checkpoint
from .decoder import GazeDecoder
from .encoder import Connector, ShallowVideoConvNet
from .fast import FastGazeRunner, _slot_budget
from .generation import DecodeState, Sampler, decode_frame
from .masks import gazing_masks, positions_from_masks
from .options import (BACKENDS, PRECISIONS, GenerateOptions, check_sampling_args, check_state, check_video,
                      frame_caps, requirement_tensor, target_geometry, tiles_per_side)
from .output import TARGET_SCALE_DELETED, GazeOutput
from .precision import tf32 as _tf32
from .scoring import TeacherForcedScores, gazing_tensors, teacher_forced_scores

GazeState = DecodeState

# what resolve_pretrained calls a checkpoint in its errors: names the files a local folder must hold
CHECKPOINT_WHAT = "AutoGaze checkpoint (config.json + model.safetensors)"


class AutoGazeModel(nn.Module):
    """``gazing_model``: conv encoder + connector + gaze decoder."""

    def __init__(self, cfg: AutoGazeConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = ShallowVideoConvNet(cfg.vision)
        num_tokens = (cfg.input_img_size // cfg.vision.kernel_size) ** 2
        self.connector = Connector(num_tokens, cfg.vision.out_dim)
        self.gaze_decoder = GazeDecoder(cfg.decoder)

    def embed_video(self, video: torch.Tensor, conv_past: list | None = None):
        """video (B, T, 3, H, W) -> vision tokens (B, T, n, D) and the new conv caches.
        Frames are resized to the model size with bicubic interpolation (spec §2.2)."""
        B, T = video.shape[:2]
        S = self.cfg.input_img_size
        if video.shape[-2:] != (S, S):
            video = F.interpolate(video.flatten(0, 1), size=(S, S), mode="bicubic", align_corners=False)
            video = video.view(B, T, *video.shape[1:])
        feats, new_past = self.vision_model(video, conv_past)
        return self.connector(feats), new_past


def _raise_if_nonfinite(flag: torch.Tensor) -> None:
    """flag: a 0-d bool tensor on the video's device, read here (where the caller syncs anyway)."""
    if bool(flag):
        raise ValueError("video: holds NaN or Inf values, which AutoGaze would gaze without a word (argmax over NaN "
                         "logits); check the frames and their preprocessing (or pass check_finite=False)")


def _as_device(device) -> torch.device:
    """A device for .to(): a torch.device, its name or a CUDA index; one that is not there is a ValueError."""
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"device: expected a torch.device, a device name or a CUDA index, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a device ({str(e).splitlines()[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"device: expected cpu or cuda, got {device}")
    return device


def _as_float_dtype(value, name: str) -> torch.dtype:
    """A floating torch.dtype, or its name ("bfloat16", "torch.float16", ...)."""
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), value)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"{name}: expected a floating torch.dtype (float32, bfloat16, float16, ...), its name or "
                         f"'auto', got {value!r}")
    return value


_WARNED: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)  # past _resolve_generate and generate


class AutoGaze(nn.Module):
    """AutoGaze gaze model (spec §1, §4, §5).

    ``AutoGaze.from_pretrained(dir)`` loads an official checkpoint; ``generate(video, ...)``
    returns a :class:`GazeOutput`. The module is a plain ``nn.Module`` (CPU, float32 after
    loading); move it with ``.to()`` as usual.
    """

    # rows (clips x tiles) up to which backend="auto" picks the fast path when the compiled decoder
    # ops are not built (the pure-PyTorch fast path loses to the reference loop at large batch)
    FAST_AUTO_MAX_BATCH = 16

    def __init__(self, config: AutoGazeConfig | None = None):
        super().__init__()
        self.config = config or AutoGazeConfig()
        self.gazing_model = AutoGazeModel(self.config)
        self.pretrained_info: dict | None = None  # set by from_pretrained: {"id", "revision", "path", "local"}
        self.eval()

    # --- properties mirroring the official attributes -------------------------------------
    @property
    def scales(self) -> list[int]:
        return list(self.config.scales)

    @property
    def num_vision_tokens_each_frame(self) -> int:
        return self.config.num_vision_tokens_each_frame

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- checkpoint I/O ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | int = "cpu", *,
                        revision: str | None = None, torch_dtype: torch.dtype | str | None = None,
                        dtype: torch.dtype | str | None = None) -> "AutoGaze":
        """Load ``config.json`` + ``model.safetensors`` (official format, keys ``gazing_model.*``).

        ``path``: a local checkpoint folder (always preferred) or a Hugging Face hub id such as
        ``"nvidia/AutoGaze"``, fetched at ``revision`` (see :func:`autogaze_ext.hub.resolve_pretrained`).
        ``model.pretrained_info`` then records the id, the snapshot's commit hash and the folder.
        ``device`` (positional or keyword) and ``torch_dtype`` (or its newer transformers name ``dtype``: a
        floating torch.dtype, its name such as ``"bfloat16"``, or ``"auto"`` for the checkpoint's own dtype)
        place the model as transformers does; default CPU float32. Weights holding NaN or Inf are refused.
        """
        device = _as_device(device)
        if torch_dtype is not None and dtype is not None:
            raise ValueError("torch_dtype and dtype: give one of them (dtype is the newer name)")
        want = torch_dtype if torch_dtype is not None else dtype
        if want is not None and not (isinstance(want, str) and want == "auto"):
            want = _as_float_dtype(want, "torch_dtype" if torch_dtype is not None else "dtype")
        folder = resolve_pretrained(path, revision, what=CHECKPOINT_WHAT, allow_patterns=CHECKPOINT_PATTERNS)
        if os.path.isfile(folder):
            raise ValueError(f"{CHECKPOINT_WHAT}: {os.fspath(path)!r} is a file; pass the folder that holds it "
                             f"({os.path.dirname(os.path.abspath(folder))!r})")
        model = cls(AutoGazeConfig.from_pretrained(folder))
        stored = checkpoint.load_into(model, folder)
        model.pretrained_info = describe_pretrained(path, folder, revision)
        return model.to(device=device, dtype=stored if want == "auto" else want).eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` in the official format."""
        self.config.save_pretrained(directory)
        checkpoint.save(self, os.fspath(directory))

    # --- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor,
        gazing_ratio: float | Sequence[float] | None = None,
        task_loss_requirement: float | Sequence[float] | torch.Tensor | None = None,
        target_scales: Sequence[int] | None = None,
        target_patch_size: int | None = None,
        *,
        state: GazeState | None = None,
        return_state: bool = False,
        cached: bool = True,
        do_sample: bool | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        margins: list | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        check_finite: bool = True,
    ):
        """Gaze a batch of clips.

        video: (B, T, 3, H, W) float, normalised by :class:`AutoGazeImageProcessor`; T <= 16.
        gazing_ratio / task_loss_requirement: combination rules of spec §1.2 — both: cap from the
        ratio, stop on the requirement; ratio only: no early stop; requirement only: cap 265;
        neither: the config's inference values (released: 0.75 and 0.7).
        target_scales / target_patch_size: ids for a ViT of another geometry (spec §5.9).
        state / return_state: streaming (spec §5.8): pass the returned state back with the next
        frames; ids are then local to each call.
        do_sample: None follows ``self.training`` as the official model does; sampling uses
        ``temperature`` and top-k (config, 50), reproducible with ``seed`` or ``generator``.
        cached=False recomputes the whole sequence each step (a slow oracle for testing).
        margins: a list that receives, per decoded frame (per tile row block), the smallest
        greedy top-1/top-2 logit gap or |predicted loss - requirement| met — how close the
        frame came to a tie, for tie-aware comparisons.
        backend: "reference" (the readable PyTorch loop), "fast" (static shapes, device-side
        selection, CUDA graphs on a GPU) or "auto" (fast on CUDA for greedy static clips).
        Both give the same ids.
        precision: "fp32" (exact: TF32 off) or "tf32": on a GPU the cuBLAS matmuls, the encoder's
        cuDNN convolutions and, on the fast path, the attention of prefills over more than
        ``FastGazeRunner.LAYERS_OP_MAX_ROWS`` rows run on TF32 tensor cores (with the compiled
        decoder ops that is what batches of 10 clips and more spend most time on; decode steps stay
        fp32). Faster at large batch; the ids then agree with fp32 only mostly (near-ties flip:
        compare with ``GazeOutput.agreement``; benchmarks/RESULTS.md gives measured rates). CPU
        computation is fp32 either way.
        check_finite: refuse a video or weights holding NaN or Inf (ValueError). The video is checked on its
        device and the flag read where the call syncs anyway; the weights once per change of the weights.
        """
        opts = self._resolve_generate(
            video, gazing_ratio, task_loss_requirement, target_scales, target_patch_size, state=state,
            return_state=return_state, cached=cached, do_sample=do_sample, temperature=temperature, top_k=top_k,
            generator=generator, seed=seed, margins=margins, backend=backend, precision=precision,
            check_finite=check_finite)
        return self._run_generate(opts)

    def _resolve_generate(self, video, gazing_ratio, task_loss_requirement, target_scales, target_patch_size, *,
                          state, return_state, cached, do_sample, temperature, top_k, generator, seed, margins,
                          backend, precision, check_finite) -> GenerateOptions:
        """generate's arguments, checked and normalised; backend "auto" resolved. With check_finite the weights and
        (for the reference loop, which syncs at every step anyway) the video are checked here, before the
        requirement and the state: the order fixes which error a call with several faults raises."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected 'fp32' (exact) or 'tf32', got {precision!r}")
        temperature, top_k, generator = check_sampling_args(
            state=state, return_state=return_state, cached=cached, do_sample=do_sample, temperature=temperature,
            top_k=top_k, generator=generator, seed=seed, margins=margins, check_finite=check_finite)
        video = self._check_video(video)
        if video.device.type == "cpu" and video.dtype in (torch.float16, torch.bfloat16):
            _warn_once(("cpu", video.dtype), f"AutoGaze.generate in {video.dtype} on the CPU is slow, and its ids "
                       "differ from float32 ones; call .float() on the model for the exact (and faster) CPU path")
        B, T = video.shape[:2]
        if gazing_ratio is None and task_loss_requirement is None:
            gazing_ratio = self.config.default_gazing_ratio
            task_loss_requirement = self.config.default_task_loss_requirement
            if gazing_ratio is None:
                raise ValueError(
                    "gazing_ratio: the config samples the ratio at random at inference; pass gazing_ratio explicitly"
                )
        elif gazing_ratio is None:
            gazing_ratio = 1.0
        if do_sample is None:
            do_sample = self.training
        sampler = Sampler(do_sample, temperature, self.config.decoder.top_k if top_k is None else top_k, generator,
                          margins)

        target = self._target_geometry(target_scales, target_patch_size)
        if target is not None and (state is not None or return_state):
            raise ValueError("target_scales: streaming (state/return_state) is not supported with target scales")

        offset = 0 if state is None else state.frames_seen
        limit = self.config.max_num_frames
        if offset + T > limit:
            raise ValueError(
                f"video: {offset + T} frames in one clip, but the model was trained on clips of at most {limit}; "
                f"cut the video into clips of {limit} frames (autogaze_ext.split_clips) or restart the stream"
            )
        streaming = state is not None or return_state
        caps = frame_caps(gazing_ratio, T, offset, streaming, self.num_vision_tokens_each_frame)
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto', 'reference' or 'fast', got {backend!r}")
        fast_ok = not (streaming or do_sample or margins is not None or not cached)
        if backend == "fast" and not fast_ok:
            raise ValueError("backend: 'fast' decodes greedy static clips only (no state, sampling, margins "
                             "or cached=False); use backend='reference'")
        # auto: with the compiled decoder ops the fast path wins at every measured batch size; its
        # pure-PyTorch form only at small batch (benchmarks/RESULTS.md)
        use_fast = backend == "fast" or (
            backend == "auto" and fast_ok and video.is_cuda
            and (DecoderOps.available(video.device) or B <= self.FAST_AUTO_MAX_BATCH))

        nonfinite = None
        if check_finite:
            self._check_weights_finite()
            nonfinite = ~torch.isfinite(video).all()  # on the device; read after the fast decode
            if not use_fast:  # the reference loop syncs at every step anyway: fail before decoding
                _raise_if_nonfinite(nonfinite)
                nonfinite = None

        if target is not None:
            H, W = video.shape[-2:]
            if H != W or H != target[0][-1]:
                raise ValueError(
                    f"video: with target_scales the frames must be square with side {target[0][-1]}, got {H}x{W}"
                )
            n = tiles_per_side(*target, self.config.grids[-1])
            req = requirement_tensor(task_loss_requirement, B * n * n, T, 0, False, video.device)
        else:
            req = requirement_tensor(task_loss_requirement, B, T, offset, streaming, video.device)
            if state is not None:
                check_state(state, B, cached, video.device)
        return GenerateOptions(
            video=video, caps=tuple(caps), requirement=req, sampler=sampler, cached=cached, state=state,
            return_state=return_state, precision=precision, use_fast=use_fast, nonfinite=nonfinite,
            target_scales=None if target is None else target[0],
            target_patch_size=None if target is None else target[1])

    def _run_generate(self, opts: GenerateOptions):
        """Runs the chosen backend: the reference loop (streaming included) or the fast runner, on the model's own
        tokens or on tiles recovered to the target scales."""
        T = opts.video.shape[1]
        state = opts.state
        ctx = _tf32(opts.precision == "tf32") if opts.video.is_cuda else contextlib.nullcontext()
        with ctx:
            if opts.target_scales is not None:
                out = self._generate_adapted(opts)
            else:
                if opts.use_fast:
                    ids, padded, counts = self._generate_fast(opts.video, opts.caps, opts.requirement, opts.precision)
                else:
                    ids, padded, counts, state = self._generate_native(opts.video, opts.caps, opts.requirement,
                                                                       opts.sampler, opts.cached, state)
                out = self._output(ids, padded, counts, T, opts.requirement)
        if opts.nonfinite is not None:
            _raise_if_nonfinite(opts.nonfinite)  # the fast decode ended with a sync: reading the flag is free
        return (out, state) if opts.return_state else out

    def _check_video(self, video) -> torch.Tensor:
        return check_video(video, self.device, self.dtype)

    def _target_geometry(self, target_scales, target_patch_size) -> tuple[tuple[int, ...], int] | None:
        return target_geometry(target_scales, target_patch_size, self.scales, self.config.num_tokens_each_scale)

    def _check_weights_finite(self) -> None:
        """Weights holding NaN or Inf raise ValueError naming them. Checked again only after the weights change
        (data pointers or in-place versions): one device->host read per change, none per call."""
        params = list(self.named_parameters())
        key = tuple((p.data_ptr(), p._version) for _, p in params)
        if self.__dict__.get("_finite_weights_key") == key:
            return
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist()
        bad = [name for (name, _), ok in zip(params, finite) if not ok]
        if bad:
            raise ValueError(f"model weights: {len(bad)} parameter(s) hold NaN or Inf values, e.g. {bad[:3]}; reload "
                             "the checkpoint (or pass check_finite=False)")
        self.__dict__["_finite_weights_key"] = key

    def _generate_native(self, video, caps, req, sampler, cached, state):
        gm = self.gazing_model
        dec = gm.gaze_decoder
        B, T = video.shape[:2]
        V, eos = self.num_vision_tokens_each_frame, dec.cfg.eos_token_id
        if state is None:
            state = GazeState.empty(B, dec.cfg.hidden_size, dec.cfg.num_layers, cached, video)
        else:  # checked against the video by _resolve_generate
            state = state.fork()  # transactional: the caller's state is never advanced, a retry repeats this call
        vision, state.conv_past = gm.embed_video(video, state.conv_past)
        ids, counts = [], []
        for t in range(T):
            frame = decode_frame(dec, state, vision[:, t], caps[t], None if req is None else req[:, t], sampler)
            ids.append(frame)
            counts.append(frame.shape[1])
        state.frames_seen += T
        padded = torch.cat([f == eos for f in ids], dim=1)
        gpos = torch.cat([f + V * t for t, f in enumerate(ids)], dim=1)
        return gpos, padded, torch.tensor(counts, dtype=torch.long, device=video.device), state

    def _generate_fast(self, video, caps, req, precision):
        gm = self.gazing_model
        B, T = video.shape[:2]
        V, eos = self.num_vision_tokens_each_frame, gm.gaze_decoder.cfg.eos_token_id
        vision, _ = gm.embed_video(video)
        runner = self._fast_runner(B, vision.shape[2], caps, precision)
        local, counts = runner.decode(vision, caps, req)
        offsets = torch.repeat_interleave(torch.arange(T, device=video.device) * V, counts)
        return local + offsets, local == eos, counts

    def _fast_runner(self, B: int, n_vision: int, caps: list[int], precision: str = "fp32") -> FastGazeRunner:
        """A runner (and its CUDA graphs) is kept per (batch size, clip length, precision: captured
        graphs keep the cuBLAS kernels of their capture) and reused while its slot budget suffices
        and the weights are unchanged."""
        K = self.config.decoder.num_multi_token_pred
        T = len(caps)
        need = _slot_budget(list(caps), n_vision, K)
        p = next(self.parameters())
        weights_key = (p.device, p.dtype, p.data_ptr(), sum(q._version for q in self.parameters()))
        cache = self.__dict__.setdefault("_fast_runners", {})
        r = cache.get((B, T, precision))
        if r is None or r[0] != weights_key or r[1] < need:
            budget = 256 * math.ceil(need / 256)
            runner = FastGazeRunner(self.gazing_model.gaze_decoder, B, T, n_vision, budget, tf32=precision == "tf32")
            cache[(B, T, precision)] = r = (weights_key, budget, runner)
        return r[2]

    def _output(self, ids, padded, counts, T, req, grids=None, V=None) -> GazeOutput:
        grids = grids or self.config.grids
        V = V or self.num_vision_tokens_each_frame
        return GazeOutput(
            gazing_pos=ids,
            if_padded_gazing=padded,
            num_gazing_each_frame=counts,
            gazing_mask=gazing_masks(ids, padded, T, grids),
            scales=self.scales,
            num_vision_tokens_each_frame=V,
            task_loss_requirement=req,
            has_task_loss_requirement=req is not None,
        )

    # --- target-scale adaptation (spec §5.9) --------------------------------------------------
    def _generate_adapted(self, opts: GenerateOptions) -> GazeOutput:
        """Gazes the model-sized tiles of each frame as batch rows, then recovers the target scales' masks."""
        video, target_scales, patch, req = opts.video, opts.target_scales, opts.target_patch_size, opts.requirement
        B, T, C, H, W = video.shape
        g_native = self.config.grids
        g_target = [s // patch for s in target_scales]
        n = tiles_per_side(target_scales, patch, g_native[-1])
        side = n * g_native[-1] * patch
        # pad the normalised video with zeros (the mean colour), then tiles become batch rows
        tiles = F.pad(video, (0, side - W, 0, side - H))
        tiles = tiles.view(B, T, C, n, side // n, n, side // n).permute(0, 3, 5, 1, 2, 4, 6)
        tiles = tiles.reshape(B * n * n, T, C, side // n, side // n)
        if opts.use_fast:
            ids, padded, counts = self._generate_fast(tiles, opts.caps, req, opts.precision)
        else:
            ids, padded, counts, _ = self._generate_native(tiles, opts.caps, req, opts.sampler, opts.cached, None)
        tile_masks = gazing_masks(ids, padded, T, g_native)
        masks = []
        for m, g, gt in zip(tile_masks, g_native, g_target):
            m = m.view(B, n, n, T, g, g).permute(0, 3, 1, 4, 2, 5).reshape(B, T, n * g, n * g)
            masks.append(m[:, :, :gt, :gt].reshape(B, T, gt * gt))
        gpos, gpad, gcounts = positions_from_masks(torch.cat(masks, dim=-1))
        Vt = sum(g * g for g in g_target)
        # as the official dictionary: the requirement per tile row (B * tiles, T), and no log_action_probs /
        # task_loss_prediction keys (its recovery cannot reorder them)
        return GazeOutput(
            gazing_pos=gpos, if_padded_gazing=gpad, num_gazing_each_frame=gcounts, gazing_mask=masks,
            scales=self.scales, num_vision_tokens_each_frame=Vt,
            task_loss_requirement=req, has_task_loss_requirement=req is not None, deleted=TARGET_SCALE_DELETED,
        )

    # --- teacher-forced scoring (training) --------------------------------------------------------
    def score(self, video: torch.Tensor, gazing_info, *, precision: str = "bf16", check: bool = True
              ) -> TeacherForcedScores:
        """Teacher-forced scores of given gaze sequences: the training forward (spec §7.1, ``model/scoring.py``).

        video: (B, T, 3, H, W) float, normalised by :class:`AutoGazeImageProcessor` (resized to 224 inside).
        gazing_info: ``autogaze_ext.training.collate_gazing_info(labels, ...)`` or a :class:`GazeOutput` (e.g.
        sampled trajectories): ``gazing_pos`` (B, N) video-global ids, ``if_padded_gazing`` (B, N) bool and
        ``num_gazing_each_frame`` (T,); moved to the video's device. ``check`` verifies that every unpadded id of
        frame t lies in [265 t, 265 (t + 1)) (one device sync).
        precision: "bf16" (default) runs the pass under CUDA bf16 autocast, as the official training forward does
        unconditionally on a GPU; "fp32" opts out (true fp32, TF32 off). On the CPU both are fp32, as the official.

        Returns :class:`TeacherForcedScores` ``(log_action_probs, task_loss_prediction, gaze_probs)``, each (B, N)
        float32 and differentiable w.r.t. the weights (grad mode permitting): ``log_action_probs = log(p + 1e-8)``
        with p the softmax over all 266 outputs of the slot's head (padded slots: p of EOS).
        """
        check_bool(check, "check")
        video = self._check_video(video)
        B, T = video.shape[:2]
        gpos, padded, counts = gazing_tensors(gazing_info, B, T, self.num_vision_tokens_each_frame, video.device,
                                              check)
        return teacher_forced_scores(self.gazing_model, video, gpos, padded, counts, precision)

    # --- the official call style ----------------------------------------------------------------
    def forward(self, inputs: dict, target_scales=None, target_patch_size=None, gazing_info=None,
                temperature=1.0, gazing_ratio=None, task_loss_requirement=None, generate_only=False,
                use_cache=False, past_key_values=None, past_inputs_embeds=None,
                past_attention_mask=None, past_conv_values=None, *, precision: str = "bf16") -> GazeOutput:
        """``model({"video": v}, gazing_ratio=..., generate_only=True)`` as in the official code.

        Without ``gazing_info`` the model gazes (greedy in ``eval()``, sampling with ``temperature`` and top-k 50
        in ``train()``, as the official forward); with ``generate_only=False`` (the official default) the gaze is
        then scored teacher-forced (:meth:`score`, ``precision`` as there): ``log_action_probs`` and
        ``task_loss_prediction`` are filled in — the official's second pass, under bf16 autocast on a GPU. With
        ``gazing_info`` (``collate_gazing_info(...)`` or a GazeOutput) it only scores those ids: the dictionary then
        carries ``gazing_pos`` / ``if_padded_gazing`` / ``num_gazing_each_frame`` as given, their masks, and
        ``task_loss_requirement`` from ``gazing_info`` if it has one, as the official. Target scales other than the
        model's own gaze tiles, whose outputs the official deletes the scores from, so they are only accepted
        without ``gazing_info`` (the scoring pass is then skipped).

        Streaming in this style: ``use_cache=True`` returns the state under ``past_key_values``;
        pass it back as ``past_key_values`` (the other three ``past_*`` arguments are not used).
        """
        if not isinstance(inputs, dict) or "video" not in inputs:
            raise TypeError("inputs: expected a dict with a 'video' tensor")
        check_bool(generate_only, "generate_only")
        if past_key_values is not None and not isinstance(past_key_values, GazeState):
            raise TypeError("past_key_values: expected the state returned by a previous use_cache=True call")
        adapt = self._target_geometry(target_scales, target_patch_size) is not None
        # as the official: an empty dict (a loader without labels) means "gaze first"
        given = gazing_info is not None and not (isinstance(gazing_info, dict) and len(gazing_info) == 0)
        if not generate_only and (use_cache or past_key_values is not None):
            raise ValueError("use_cache / past_key_values: streaming needs generate_only=True (the official forward "
                             "does not score streamed gaze either)")
        if given:
            if adapt:
                raise ValueError("gazing_info: teacher-forced scoring works on the model's own token layout; pass "
                                 f"target_scales={self.scales} (or none), not {list(target_scales)}")
            video = self._check_video(inputs["video"])
            B, T = video.shape[:2]
            gpos, padded, counts = gazing_tensors(gazing_info, B, T, self.num_vision_tokens_each_frame, video.device)
            req = gazing_info.get("task_loss_requirement") if hasattr(gazing_info, "get") else None
            out = self._output(gpos, padded, torch.tensor(counts, dtype=torch.long, device=video.device), T, req)
        else:
            res = self.generate(
                inputs["video"], gazing_ratio, task_loss_requirement, target_scales, target_patch_size,
                state=past_key_values, return_state=use_cache, temperature=temperature,
            )
            if use_cache:
                out, st = res
                out.past_key_values = st  # the other three past_* keys stay None
                return out
            out = res
            if adapt:  # the official deletes the scores of adapted output: skip the pass
                return out
            video, gpos, padded, counts = inputs["video"], out.gazing_pos, out.if_padded_gazing, \
                out.num_gazing_each_frame.tolist()
        if not generate_only:
            video = self._check_video(video)
            s = teacher_forced_scores(self.gazing_model, video, gpos, padded, counts, precision)
            out.log_action_probs, out.task_loss_prediction = s.log_action_probs, s.task_loss_prediction
        return out
