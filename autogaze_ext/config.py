"""AutoGaze configuration, read from (and written to) a Hugging Face ``config.json``.

Only the fields the model needs are interpreted; the whole parsed dictionary is kept so that
``save_pretrained`` writes back what ``from_pretrained`` read (spec §1.1, §4).
"""
from __future__ import annotations

import copy
import json
import math
import numbers
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


_MISSING = object()


class _Fields:
    """Reads the typed fields of a config dictionary; every error names the source (the file), the field's
    dotted path and what was expected."""

    def __init__(self, source: str):
        self.source = source

    def error(self, path: str, expected: str, value) -> ValueError:
        return ValueError(f"{self.source}: field {path!r} must be {expected}, got {value!r:.100}")

    def get(self, d: dict, key: str, path: str, default=_MISSING):
        value = d.get(key) if isinstance(d, dict) else None
        if value is None:  # absent or null: the default (HF configs write null for "use the default")
            if default is _MISSING:
                raise ValueError(f"{self.source}: missing field {path + key!r}")
            return default
        return value

    def section(self, d: dict, key: str, path: str = "", default=_MISSING) -> dict:
        value = self.get(d, key, path, default)
        if not isinstance(value, dict):
            raise self.error(path + key, "an object", value)
        return value

    def int(self, d: dict, key: str, path: str = "", default=_MISSING, minimum: int = 1) -> int:
        value = self.get(d, key, path, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 192.0 in a hand-written config
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise self.error(path + key, f"an integer >= {minimum}", value)
        return int(value)

    def float(self, d: dict, key: str, path: str = "", default=_MISSING, positive: bool = True) -> float:
        value = self.get(d, key, path, default)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0) or value < 0:
            raise self.error(path + key, "a finite number " + ("> 0" if positive else ">= 0"), value)
        return float(value)


def _parse_scales(f: _Fields, raw: dict) -> list[int]:
    """``scales``: side lengths joined by '+' ("32+64+112+224"), as the official config writes them."""
    value = f.get(raw, "scales", "")
    parts = str(value).split("+") if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool) else []
    if not parts or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise f.error("scales", "positive side lengths joined by '+' (e.g. \"32+64+112+224\")", value)
    return sorted(int(p) for p in parts)


def _check_rope_scaling(f: _Fields, value, path: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise f.error(path, "an object or null", value)
    kind = value.get("rope_type", value.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise f.error(path + ".rope_type", "'default' or 'llama3'", kind)
    if kind == "llama3":
        p = path + "."
        f.float(value, "factor", p)
        low, high = f.float(value, "low_freq_factor", p), f.float(value, "high_freq_factor", p)
        if high <= low:
            raise f.error(p + "high_freq_factor", f"> low_freq_factor ({low})", high)
        f.int(value, "original_max_position_embeddings", p)
    return value


@dataclass(repr=False)
class AutoGazeConfig:
    """Typed view of an AutoGaze ``config.json``.

    ``AutoGazeConfig()`` gives the released architecture; ``AutoGazeConfig.from_dict(d)`` and
    ``AutoGazeConfig.from_pretrained(dir)`` read the official format. Every field the model uses is checked
    (type and range); errors name the file, the field and what was expected.
    """

    raw: dict[str, Any] = field(default_factory=released_config_dict)
    source: str = field(default="config", compare=False)  # how errors name it: "config '<file>'" when read

    def __post_init__(self) -> None:
        r = self.raw
        if not isinstance(r, dict):
            raise TypeError(f"{self.source}: expected a dict, got {type(r).__name__}")
        f = _Fields(self.source)
        self.scales = _parse_scales(f, r)
        self.num_vision_tokens_each_frame = f.int(r, "num_vision_tokens_each_frame")
        self.max_num_frames = f.int(r, "max_num_frames", default=16)
        gm = f.section(r, "gaze_model_config")
        vm = f.section(gm, "vision_model_config", "gaze_model_config.")
        dec = f.section(gm, "gaze_decoder_config", "gaze_model_config.")
        self.input_img_size = f.int(gm, "input_img_size", "gaze_model_config.", default=224)
        p = "gaze_model_config.vision_model_config."
        self.vision = VisionConfig(
            hidden_dim=f.int(vm, "hidden_dim", p, 192),
            out_dim=f.int(vm, "out_dim", p, 192),
            depth=f.int(vm, "depth", p, 1),
            kernel_size=f.int(vm, "kernel_size", p, 16),
            temporal_patch_size=f.int(vm, "temporal_patch_size", p, 1),
            trunk_temporal_kernel_size=f.int(vm, "trunk_temporal_kernel_size", p, 3),
            trunk_spatial_kernel_size=f.int(vm, "trunk_spatial_kernel_size", p, 3),
        )
        if self.vision.temporal_patch_size != 1:
            raise f.error(p + "temporal_patch_size", "1 (as released; the only one supported)",
                          self.vision.temporal_patch_size)
        if self.vision.trunk_spatial_kernel_size % 2 == 0:  # odd kernels keep the grid's size
            raise f.error(p + "trunk_spatial_kernel_size", "odd", self.vision.trunk_spatial_kernel_size)
        if self.vision.kernel_size > self.input_img_size:
            raise f.error(p + "kernel_size", f"<= input_img_size ({self.input_img_size})", self.vision.kernel_size)
        p = "gaze_model_config.gaze_decoder_config."
        hidden = f.int(dec, "hidden_size", p)
        heads = f.int(dec, "num_attention_heads", p)
        kv_heads = f.int(dec, "num_key_value_heads", p, heads)
        if heads % kv_heads:
            raise f.error(p + "num_key_value_heads", f"a divisor of num_attention_heads ({heads})", kv_heads)
        head_dim = f.int(dec, "head_dim", p, hidden // heads, minimum=2)
        if head_dim % 2:
            raise f.error(p + "head_dim", "even (RoPE rotates pairs)", head_dim)
        if self.vision.out_dim != hidden:
            raise f.error("gaze_model_config.vision_model_config.out_dim", f"the decoder's hidden_size ({hidden})",
                          self.vision.out_dim)
        self.decoder = DecoderConfig(
            # The official code derives the vocabulary from the token count (+1 for EOS).
            vocab_size=self.num_vision_tokens_each_frame + 1,
            hidden_size=hidden,
            intermediate_size=f.int(dec, "intermediate_size", p),
            num_layers=f.int(dec, "num_hidden_layers", p),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=f.float(dec, "rms_norm_eps", p, 1e-6),
            rope_theta=f.float(dec, "rope_theta", p, 10000.0),
            rope_scaling=_check_rope_scaling(f, dec.get("rope_scaling"), p + "rope_scaling"),
            eos_token_id=self.num_vision_tokens_each_frame,
            num_multi_token_pred=f.int(dec, "num_multi_token_pred", p, 1),
            top_k=f.int(dec, "top_k", p, 50, minimum=0),
        )
        self.num_tokens_each_scale = [
            int(s**2 / sum(x**2 for x in self.scales) * self.num_vision_tokens_each_frame)
            for s in self.scales
        ]
        if sum(self.num_tokens_each_scale) != self.num_vision_tokens_each_frame:
            raise ValueError(
                f"{self.source}: scales {self.scales} do not split {self.num_vision_tokens_each_frame} "
                "tokens per frame exactly"
            )
        self.grids = [int(round(n**0.5)) for n in self.num_tokens_each_scale]
        if any(g * g != n for g, n in zip(self.grids, self.num_tokens_each_scale)):
            raise ValueError(f"{self.source}: scales {self.scales} give per-scale token counts "
                             f"{self.num_tokens_each_scale}, which are not squares")

    def __repr__(self) -> str:
        d = self.decoder
        return (f"AutoGazeConfig(scales={self.scales}, tokens_per_frame={self.num_vision_tokens_each_frame}, "
                f"grids={self.grids}, max_num_frames={self.max_num_frames}, input_img_size={self.input_img_size}, "
                f"decoder={d.num_layers}x{d.hidden_size}d heads={d.num_heads}/{d.num_kv_heads}x{d.head_dim} "
                f"mlp={d.intermediate_size} K={d.num_multi_token_pred})")

    # --- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "AutoGazeConfig":
        return cls(raw=copy.deepcopy(d), source=source)

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
        except (UnicodeDecodeError, json.JSONDecodeError) as e:  # binary files too (e.g. the weights file)
            raise ValueError(f"config: {file!r} is not a JSON config file ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"config: {file!r} must hold a JSON object, got a {type(d).__name__}")
        return cls.from_dict(d, source=f"config {file!r}")

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
        f = _Fields(self.source)
        c = f.section(self.raw, "gazing_ratio_config", default={})
        if c.get("sample_strategy_during_inference", "fixed") != "fixed":
            return None
        fixed = f.section(c, "fixed", "gazing_ratio_config.", default={})
        ratio = f.float(fixed, "gazing_ratio", "gazing_ratio_config.fixed.", 0.5)
        if ratio > 1:
            raise f.error("gazing_ratio_config.fixed.gazing_ratio", "in (0, 1]", ratio)
        return ratio

    @property
    def default_task_loss_requirement(self) -> float | None:
        if not self.raw.get("has_task_loss_requirement_during_inference", False):
            return None
        f = _Fields(self.source)
        c = f.section(self.raw, "task_loss_requirement_config", default={})
        if c.get("sample_strategy_during_inference", "fixed") != "fixed":
            return None
        fixed = f.section(c, "fixed", "task_loss_requirement_config.", default={})
        return f.float(fixed, "task_loss_requirement", "task_loss_requirement_config.fixed.", 0.7, positive=False)
