"""A training-free gazer that optimises the paper's objective directly: keep the fewest multi-scale
patches from which each frame can be reconstructed within an error bound.

Per frame, a running reconstruction starts from the mean colour (frame 0) or from the previous
frame's reconstruction (later frames). A gazed token of scale s paints its region with the frame's
content at that scale (the frame resized down to the scale's side, then back up), and finer tokens
paint over coarser ones. Greedily, the token that lowers the frame's mean absolute error the most is
added, until the error is below ``max_error`` or the frame's cap is reached; every frame keeps at least
one token, as AutoGaze does. Frames of one batch share their slot count (extra slots are pads), so
the output has the layout of :class:`AutoGaze` and can feed the same consumers, or serve as
next-token-prediction labels (``extra["reconstruction_error"]`` holds the error after each slot).

``max_error`` is a mean absolute error in the normalised pixel space of the AutoGaze processor
(``(x/127.5 - 1 - mean) / std``), where one 8-bit level is about 0.035: 0.1 keeps fine detail,
0.2-0.3 is a typical working range, 0.5 keeps little beyond coarse colour.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

from .ops._common import as_list
from .model.masks import gazing_masks, positions_from_masks
from .model.output import GazeOutput

SCALES = (32, 64, 112, 224)
PATCH = 16


def scale_paints(frames: torch.Tensor, scales: Sequence[int], size: int) -> torch.Tensor:
    """(N, 3, S, S) -> (N, n_scales, 3, S, S): each frame seen at each scale, brought back to S.
    Down: antialiased bilinear (an area-like average); up: bilinear."""
    out = []
    for sc in scales:
        low = frames if sc == size else F.interpolate(frames, size=(sc, sc), mode="bilinear",
                                                      align_corners=False, antialias=True)
        out.append(low if sc == size else F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False))
    return torch.stack(out, dim=1)


class GreedyGazer:
    """Same ``generate()`` signature and :class:`GazeOutput` as :class:`AutoGaze`, no weights."""

    def __init__(self, scales: Sequence[int] = SCALES, patch_size: int = PATCH, size: int = 224,
                 max_error: float = 0.25, max_num_frames: int = 16):
        self.scales = sorted(int(s) for s in scales)
        self.patch = int(patch_size)
        self.size = int(size)
        if any(s % self.patch or s > self.size for s in self.scales) or self.size % max(self.scales):
            raise ValueError(f"scales: each must be a multiple of patch_size {patch_size} and at most size {size}")
        self.grids = [s // self.patch for s in self.scales]
        self.num_vision_tokens_each_frame = sum(g * g for g in self.grids)
        self.max_error = float(max_error)
        self.max_num_frames = int(max_num_frames)
        self.device = torch.device("cpu")

    def to(self, device) -> "GreedyGazer":
        self.device = torch.device(device)
        return self

    def eval(self) -> "GreedyGazer":
        return self

    # ----------------------------------------------------------------------------------------
    def _paint(self, recon, level, cur, paints, err_s, best, live, offsets) -> None:
        """Paint each live row's chosen token region with its scale's content, except where a
        finer token already painted; keeps the per-pixel error map in step (in place)."""
        B, _, S, _ = recon.shape
        region = torch.zeros(B, S, S, dtype=torch.bool, device=recon.device)
        scale = torch.zeros(B, dtype=torch.long, device=recon.device)
        for s, g in enumerate(self.grids):
            local = best - offsets[s]
            hit = live & (local >= 0) & (local < g * g)
            onehot = F.one_hot(local.clamp(0, g * g - 1), g * g).bool() & hit[:, None]
            cs = S // g
            region |= onehot.view(B, g, g).repeat_interleave(cs, 1).repeat_interleave(cs, 2)
            scale = torch.where(hit, torch.full_like(scale, s), scale)
        paint = region & (level < scale[:, None, None])
        rows = torch.arange(B, device=recon.device)
        recon.copy_(torch.where(paint[:, None], paints[rows, scale], recon))
        cur.copy_(torch.where(paint, err_s[rows, scale], cur))
        level.copy_(torch.where(paint, scale[:, None, None], level))

    def _region_sum(self, m: torch.Tensor, g: int) -> torch.Tensor:
        """(N, S, S) per-pixel values -> (N, g*g) sums over each token's region of a g x g grid."""
        N, S, _ = m.shape
        c = S // g
        return m.view(N, g, c, g, c).sum(dim=(2, 4)).reshape(N, g * g)

    @torch.no_grad()
    def generate(self, video: torch.Tensor, gazing_ratio=None, task_loss_requirement=None,
                 target_scales=None, target_patch_size=None, *, max_error: float | None = None,
                 state: dict | None = None, return_state: bool = False):
        """video: (B, T, 3, H, W) normalised float (frames are resized to 224 like AutoGaze does).
        gazing_ratio caps tokens per frame (float or per-frame list, default 1.0); max_error stops a
        frame (default: the gazer's). task_loss_requirement is not used (AutoGaze's learned stop).
        state / return_state: streaming, the reconstruction carries over between calls."""
        if target_scales is not None or target_patch_size is not None:
            raise ValueError("target_scales: not supported by GreedyGazer; tile the video instead")
        if not isinstance(video, torch.Tensor) or not video.is_floating_point() or video.ndim != 5 \
                or video.shape[2] != 3:
            raise ValueError("video: expected a float tensor (B, T, 3, H, W)")
        if not bool(torch.isfinite(video).all()):  # the NaN/Inf policy (the loop below syncs every step anyway)
            raise ValueError("video: holds NaN or Inf values; check the frames and their preprocessing")
        B, T = video.shape[:2]
        if state is not None and not (isinstance(state, dict) and isinstance(state.get("recon"), torch.Tensor)
                                      and isinstance(state.get("frames_seen"), int)):
            raise TypeError("state: expected the dict returned by generate(..., return_state=True)")
        offset = 0 if state is None else state["frames_seen"]
        if offset + T > self.max_num_frames:
            raise ValueError(f"video: {offset + T} frames in one clip; at most {self.max_num_frames}")
        err_max = self.max_error if max_error is None else float(max_error)
        if not err_max >= 0:
            raise ValueError(f"max_error: must be >= 0, got {max_error}")
        V = self.num_vision_tokens_each_frame
        caps = self._caps(gazing_ratio, T, offset)
        S = self.size
        x = video.to(self.device, torch.float32)
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x.flatten(0, 1), size=(S, S), mode="bicubic", align_corners=False).view(B, T, 3, S, S)
        if state is None:
            recon = x[:, 0].mean(dim=(2, 3), keepdim=True).expand(B, 3, S, S).clone()
        else:
            recon = state["recon"].to(self.device, copy=True)  # painted in place: never the caller's state
            if recon.shape[0] != B:
                raise ValueError(f"state: was made for batch {recon.shape[0]}, got {B}")
        offsets = [sum(g * g for g in self.grids[:i]) for i in range(len(self.grids))]
        frames_ids, frames_err = [], []
        for t in range(T):
            frame = x[:, t]
            paints = scale_paints(frame, self.scales, S)  # (B, nS, 3, S, S)
            err_s = (paints - frame[:, None]).abs().sum(2)  # (B, nS, S, S): error where scale s paints
            cur = (recon - frame).abs().sum(1)  # (B, S, S): current per-pixel error (sum over channels)
            level = torch.full((B, S, S), -1, dtype=torch.long, device=self.device)
            scale_idx = torch.arange(len(self.grids), device=self.device)[None, :, None, None]
            chosen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
            done = torch.zeros(B, dtype=torch.bool, device=self.device)
            ids, errs = [], []
            for step in range(caps[t]):
                # gain of a token = error removed over the pixels it would paint (not painted finer yet)
                delta = torch.where(level[:, None] < scale_idx, cur[:, None] - err_s, torch.zeros_like(err_s))
                gain = torch.cat([self._region_sum(delta[:, s], g) for s, g in enumerate(self.grids)], dim=1)
                best = gain.masked_fill(chosen, float("-inf")).argmax(dim=1)  # (B,)
                err_now = cur.mean(dim=(1, 2)) / 3
                # stop rows under the bound, except that every frame keeps one token
                done = done | ((err_now < err_max) & (step > 0))
                if bool(done.all()):
                    break
                live = ~done
                chosen[live, best[live]] = True
                self._paint(recon, level, cur, paints, err_s, best, live, offsets)
                ids.append(torch.where(live, best, torch.full_like(best, V)))
                errs.append(cur.mean(dim=(1, 2)) / 3)
            frames_ids.append(torch.stack(ids, dim=1))
            frames_err.append(torch.stack(errs, dim=1))
        counts = torch.tensor([f.shape[1] for f in frames_ids], dtype=torch.long)
        local = torch.cat(frames_ids, dim=1)
        pads = local == V
        gpos = local + torch.repeat_interleave(torch.arange(T) * V, counts).to(local.device)
        out = GazeOutput(
            gazing_pos=gpos, if_padded_gazing=pads, num_gazing_each_frame=counts.to(local.device),
            gazing_mask=gazing_masks(gpos, pads, T, self.grids), scales=list(self.scales),
            num_vision_tokens_each_frame=V,
        )
        out.extra["reconstruction_error"] = torch.cat(frames_err, dim=1)
        out.extra["reconstruction"] = recon
        if return_state:
            return out, {"recon": recon, "frames_seen": offset + T}
        return out

    def _caps(self, gazing_ratio, T: int, offset: int) -> list[int]:
        V = self.num_vision_tokens_each_frame
        if gazing_ratio is None:
            return [V] * T
        if isinstance(gazing_ratio, numbers.Real) and not isinstance(gazing_ratio, bool):  # numpy scalars too
            ratios = [float(gazing_ratio)] * T
        elif isinstance(gazing_ratio, (list, tuple)) or hasattr(gazing_ratio, "tolist"):
            ratios = [float(r) for r in as_list(gazing_ratio)]
        else:
            raise TypeError(f"gazing_ratio: expected a number or a list of numbers, got {type(gazing_ratio).__name__}")
        if len(ratios) != T:
            if len(ratios) >= offset + T:
                ratios = ratios[offset: offset + T]
            else:
                raise ValueError(f"gazing_ratio: expected one value or {T} values, got {len(ratios)}")
        if any(not (0 < r <= 1) for r in ratios):
            raise ValueError(f"gazing_ratio: values must be in (0, 1], got {ratios}")
        return [max(1, int(math.floor(r * V))) for r in ratios]


__all__ = ["GreedyGazer", "scale_paints", "positions_from_masks"]
