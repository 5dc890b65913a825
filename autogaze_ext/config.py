"""AutoGaze configuration, read from (and written to) a Hugging Face ``config.json``.

Only the fields the model needs are interpreted; the whole parsed dictionary is kept so that
``save_pretrained`` writes back what ``from_pretrained`` read (spec §1.1, §4).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .hub import CONFIG_PATTERNS, resolve_pretrained

# Released AutoGaze architecture (spec §1.1, §4): used when no config.json is given.
_RELEASED: dict[str, Any] = {
    "architectures": ["AutoGaze"],
    "model_type": "autogaze",
    "scales": "32+64+112+224",
    "num_vision_tokens_each_frame": 265,
    "max_num_frames": 16,
    "use_flash_attn": False,
    "attn_mode": "sdpa",
    "has_task_loss_requirement_during_training": False,
    "has_task_loss_requirement_during_inference": True,
    "gazing_ratio_config": {
        "sample_strategy_during_training": "fixed",
        "sample_strategy_during_inference": "fixed",
        "fixed": {"gazing_ratio": 0.75},
        "uniform": {"gazing_ratio_min": 0, "gazing_ratio_max": 1},
        "exponential": {"gazing_ratio_min": 0, "gazing_ratio_max": 1, "lambda": 10},
    },
    "gazing_ratio_each_frame_config": {
        "sample_strategy_during_training": "uniform",
        "sample_strategy_during_inference": "uniform",
        "uniform": {},
        "dirichlet": {"alpha": 0.5},
        "self": {},
    },
    "task_loss_requirement_config": {
        "sample_strategy_during_training": "fixed",
        "sample_strategy_during_inference": "fixed",
        "fixed": {"task_loss_requirement": 0.7},
        "uniform": {"task_loss_requirement_min": 0.6, "task_loss_requirement_max": 0.9},
    },
    "gaze_model_config": {
        "input_img_size": 224,
        "num_vision_tokens_each_frame": 265,
        "vision_model_config": {
            "hidden_dim": 192,
            "out_dim": 192,
            "depth": 1,
            "kernel_size": 16,
            "temporal_patch_size": 1,
            "trunk_temporal_kernel_size": 3,
            "trunk_spatial_kernel_size": 3,
        },
        "connector_config": {"hidden_dim": 192, "num_tokens": 196},
        "gaze_decoder_config": {
            "model_type": "llama",
            "vocab_size": 266,
            "hidden_size": 192,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
            "num_key_value_heads": 6,
            "head_dim": 32,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 265,
            "num_multi_token_pred": 10,
            "initializer_range": 0.02,
            "top_k": 50,
        },
    },
}


def released_config_dict() -> dict[str, Any]:
    """A fresh copy of the released AutoGaze config dictionary."""
    return copy.deepcopy(_RELEASED)


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    eos_token_id: int
    num_multi_token_pred: int
    top_k: int


@dataclass(frozen=True)
class VisionConfig:
    hidden_dim: int
    out_dim: int
    depth: int
    kernel_size: int
    temporal_patch_size: int
    trunk_temporal_kernel_size: int
    trunk_spatial_kernel_size: int


@dataclass
class AutoGazeConfig:
    """Typed view of an AutoGaze ``config.json``.

    ``AutoGazeConfig()`` gives the released architecture; ``AutoGazeConfig.from_dict(d)`` and
    ``AutoGazeConfig.from_pretrained(dir)`` read the official format.
    """

    raw: dict[str, Any] = field(default_factory=released_config_dict)

    def __post_init__(self) -> None:
        r = self.raw
        if not isinstance(r, dict):
            raise TypeError(f"config: expected a dict, got {type(r).__name__}")
        try:
            gm = r["gaze_model_config"]
            vm, dec = gm["vision_model_config"], gm["gaze_decoder_config"]
            self.scales = sorted(int(s) for s in str(r["scales"]).split("+"))
            self.num_vision_tokens_each_frame = int(r["num_vision_tokens_each_frame"])
            self.max_num_frames = int(r.get("max_num_frames", 16))
            self.input_img_size = int(gm.get("input_img_size", 224))
            self.vision = VisionConfig(
                hidden_dim=int(vm.get("hidden_dim", 192)),
                out_dim=int(vm.get("out_dim", 192)),
                depth=int(vm.get("depth", 1)),
                kernel_size=int(vm.get("kernel_size", 16)),
                temporal_patch_size=int(vm.get("temporal_patch_size", 1)),
                trunk_temporal_kernel_size=int(vm.get("trunk_temporal_kernel_size", 3)),
                trunk_spatial_kernel_size=int(vm.get("trunk_spatial_kernel_size", 3)),
            )
            hidden = int(dec["hidden_size"])
            heads = int(dec["num_attention_heads"])
            self.decoder = DecoderConfig(
                # The official code derives the vocabulary from the token count (+1 for EOS).
                vocab_size=self.num_vision_tokens_each_frame + 1,
                hidden_size=hidden,
                intermediate_size=int(dec["intermediate_size"]),
                num_layers=int(dec["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(dec.get("num_key_value_heads") or heads),
                head_dim=int(dec.get("head_dim") or hidden // heads),
                rms_norm_eps=float(dec.get("rms_norm_eps", 1e-6)),
                rope_theta=float(dec.get("rope_theta", 10000.0)),
                rope_scaling=dec.get("rope_scaling"),
                eos_token_id=self.num_vision_tokens_each_frame,
                num_multi_token_pred=int(dec.get("num_multi_token_pred", 1)),
                top_k=int(dec.get("top_k", 50)),
            )
        except KeyError as e:
            raise ValueError(f"config: missing field {e} in the AutoGaze config") from None
        if self.vision.temporal_patch_size != 1:
            raise ValueError("config: only temporal_patch_size == 1 is supported (as released)")
        self.num_tokens_each_scale = [
            int(s**2 / sum(x**2 for x in self.scales) * self.num_vision_tokens_each_frame)
            for s in self.scales
        ]
        if sum(self.num_tokens_each_scale) != self.num_vision_tokens_each_frame:
            raise ValueError(
                f"config: scales {self.scales} do not split {self.num_vision_tokens_each_frame} "
                "tokens per frame exactly"
            )
        self.grids = [int(round(n**0.5)) for n in self.num_tokens_each_scale]
        if any(g * g != n for g, n in zip(self.grids, self.num_tokens_each_scale)):
            raise ValueError(f"config: per-scale token counts {self.num_tokens_each_scale} are not squares")

    # --- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoGazeConfig":
        return cls(raw=copy.deepcopy(d))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, revision: str | None = None) -> "AutoGazeConfig":
        """Read ``config.json`` from a local folder (or the file itself) or a hub id at ``revision``."""
        path = resolve_pretrained(path, revision, what="AutoGaze config (config.json)",
                                  allow_patterns=CONFIG_PATTERNS)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"config: no config.json at {file!r}")
        try:
            with open(file, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {file!r} is not valid JSON ({e})") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.raw, f, indent=2, sort_keys=True)
            f.write("\n")

    # --- values used at inference when the caller gives none -----------------------------
    @property
    def default_gazing_ratio(self) -> float | None:
        c = self.raw.get("gazing_ratio_config") or {}
        if c.get("sample_strategy_during_inference", "fixed") != "fixed":
            return None
        return float(c.get("fixed", {}).get("gazing_ratio", 0.5))

    @property
    def default_task_loss_requirement(self) -> float | None:
        if not self.raw.get("has_task_loss_requirement_during_inference", False):
            return None
        c = self.raw.get("task_loss_requirement_config") or {}
        if c.get("sample_strategy_during_inference", "fixed") != "fixed":
            return None
        return float(c.get("fixed", {}).get("task_loss_requirement", 0.7))
