"""The result of a gaze call, readable as attributes or as the official dictionary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


# The official forward's dictionary keys, in its order (spec §1.3); the past_* caches are None unless streaming.
OFFICIAL_KEYS = ("gazing_pos", "log_action_probs", "gazing_mask", "scales", "frame_sampling_rate",
                 "num_vision_tokens_each_frame", "num_gazing_each_frame", "if_padded_gazing", "task_loss_prediction",
                 "has_task_loss_requirement", "task_loss_requirement", "past_key_values", "past_input_embeds",
                 "past_attention_mask", "past_conv_values")
# what the official target-scale recovery deletes from the dictionary (spec §5.9)
TARGET_SCALE_DELETED = ("log_action_probs", "task_loss_prediction")


@dataclass(repr=False)
class GazeOutput:
    gazing_pos: torch.Tensor  # (B, N) int64, video-global ids local + V*t (spec §1.3)
    if_padded_gazing: torch.Tensor  # (B, N) bool
    num_gazing_each_frame: torch.Tensor  # (T,) int64, shared by the batch
    gazing_mask: list  # per scale (B, T, n_s) float32
    scales: list
    num_vision_tokens_each_frame: int
    frame_sampling_rate: int = 1
    task_loss_requirement: torch.Tensor | None = None
    has_task_loss_requirement: bool = False
    log_action_probs: torch.Tensor | None = None
    task_loss_prediction: torch.Tensor | None = None
    past_key_values: Any = None  # streaming (use_cache=True): the state to pass back
    past_input_embeds: Any = None
    past_attention_mask: Any = None
    past_conv_values: Any = None
    deleted: tuple = ()  # official keys absent from the dictionary view (TARGET_SCALE_DELETED after adaptation)
    extra: dict = field(default_factory=dict)  # keys beyond the official ones (e.g. the greedy gazer's)

    # dict-style access with exactly the official dictionary's keys, as the official model returns a dict
    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key in OFFICIAL_KEYS and key not in self.deleted:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: str) -> bool:
        return key in self.extra or (key in OFFICIAL_KEYS and key not in self.deleted)

    def keys(self):
        return [k for k in OFFICIAL_KEYS if k not in self.deleted] + [k for k in self.extra if k not in OFFICIAL_KEYS]

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def to_dict(self) -> dict:
        return dict(self.items())

    def __repr__(self) -> str:
        """Shapes and counts, not tensors: (B, N) slots, real tokens, frames, per-scale grids."""
        B, N = self.gazing_pos.shape
        real = int((~self.if_padded_gazing).sum()) if self.if_padded_gazing.device.type != "meta" else "?"
        req = self.task_loss_requirement
        req = "" if req is None else f", task_loss_requirement={tuple(req.shape)}"
        extra = f", extra={sorted(self.extra)}" if self.extra else ""
        return (f"GazeOutput(batch={B}, slots={N}, real_tokens={real}, frames={len(self.num_gazing_each_frame)}, "
                f"tokens_per_frame={self.num_vision_tokens_each_frame}, scales={list(self.scales)}{req}{extra})")

    def real_tokens_each_frame(self) -> torch.Tensor:
        """(B, T) number of non-padded slots per frame."""
        parts = (~self.if_padded_gazing).split(self.num_gazing_each_frame.tolist(), dim=1)
        return torch.stack([p.sum(dim=1) for p in parts], dim=1)

    def agreement(self, other: "GazeOutput") -> dict:
        """How closely another result for the same clips agrees with this one (e.g. precision="tf32"
        against exact fp32). Per batch row: ``same_ids`` the share of rows whose ids, pads and
        per-frame counts are all equal; ``same_masks`` the share whose selected patches are equal in
        every frame (order aside); ``token_overlap`` the mean over rows and frames of
        |A ∩ B| / |A ∪ B| of the selected patch sets (1 where both are empty)."""
        a = torch.cat([m.bool() for m in self.gazing_mask], dim=-1).cpu()
        b = torch.cat([m.bool() for m in other.gazing_mask], dim=-1).cpu()
        if a.shape != b.shape:
            raise ValueError(f"other: expected a result for {tuple(a.shape[:2])} (batch, frames) over the same "
                             f"patch vocabulary, got {tuple(b.shape[:2])} with {b.shape[-1]} patches per frame")
        inter = (a & b).sum(-1).double()
        union = (a | b).sum(-1).double()
        overlap = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        if self.gazing_pos.shape == other.gazing_pos.shape and torch.equal(
                self.num_gazing_each_frame.cpu(), other.num_gazing_each_frame.cpu()):
            same_ids = ((self.gazing_pos.cpu() == other.gazing_pos.cpu())
                        & (self.if_padded_gazing.cpu() == other.if_padded_gazing.cpu())).all(dim=1)
        else:
            same_ids = torch.zeros(a.shape[0], dtype=torch.bool)
        return {
            "rows": int(a.shape[0]),
            "same_ids": same_ids.double().mean().item(),
            "same_masks": (a == b).all(dim=-1).all(dim=-1).double().mean().item(),
            "token_overlap": overlap.mean().item(),
        }
