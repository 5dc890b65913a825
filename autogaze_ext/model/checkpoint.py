"""Official checkpoint files: ``model.safetensors`` (or sharded / ``pytorch_model.bin``) with
keys ``gazing_model.*`` (spec §4.4). Loading is strict: missing, unexpected, mis-shaped or non-finite
weights raise a ValueError that names them and the file."""
from __future__ import annotations

import json
import os

import torch
from torch import nn

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _load_safetensors(file: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint: cannot read {file!r}: the file is truncated or corrupt ({e})") from None


def _shard_names(index_file: str) -> list[str]:
    """The shard files a safetensors index lists (its ``weight_map`` values)."""
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint: {index_file!r} is not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map \
            or not all(isinstance(v, str) and v and os.path.basename(v) == v for v in weight_map.values()):
        raise ValueError(f"checkpoint: {index_file!r}: field 'weight_map' must map weight names to shard file "
                         f"names in the same folder, got {weight_map!r:.200}")
    return sorted(set(weight_map.values()))


def read_state_dict(path: str) -> dict:
    if os.path.isfile(path):
        files = [path]
    elif os.path.isfile(os.path.join(path, WEIGHTS)):
        files = [os.path.join(path, WEIGHTS)]
    elif os.path.isfile(os.path.join(path, INDEX)):
        files = [os.path.join(path, s) for s in _shard_names(os.path.join(path, INDEX))]
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        file = os.path.join(path, "pytorch_model.bin")
        try:
            sd = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights_only errors of every kind
            raise ValueError(f"checkpoint: cannot read {file!r} ({type(e).__name__}: {str(e).splitlines()[0]})") \
                from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"checkpoint: {file!r} does not hold a state dict of tensors")
        return sd
    else:
        raise FileNotFoundError(f"checkpoint: no {WEIGHTS} (or {INDEX}, pytorch_model.bin) in {path!r}")
    sd: dict = {}
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"checkpoint: shard {f!r} listed in the index is missing")
        sd.update(_load_safetensors(f))
    return sd


def load_into(model: nn.Module, path: str) -> torch.dtype:
    """Load the checkpoint at path (folder or file) into model; returns the stored dtype of its floating weights
    (what ``torch_dtype="auto"`` keeps)."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weight(s), e.g. {unexpected[:3]}")
        raise ValueError(f"checkpoint: {path!r} does not match the AutoGaze architecture: " + "; ".join(parts))
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"checkpoint: weight {k!r} has shape {tuple(sd[k].shape)}, expected {tuple(own[k].shape)} "
            f"({len(bad)} mismatched)"
        )
    bad = [k for k in own if not (sd[k].is_floating_point() or sd[k].dtype == own[k].dtype)]
    if bad:
        raise ValueError(f"checkpoint: weight {bad[0]!r} in {path!r} has dtype {sd[bad[0]].dtype}, expected a "
                         f"floating dtype ({len(bad)} such)")
    bad = [k for k in own if sd[k].is_floating_point() and not bool(torch.isfinite(sd[k]).all())]
    if bad:  # the NaN/Inf policy: a model with such weights would gaze without a word
        raise ValueError(f"checkpoint: weight {bad[0]!r} in {path!r} holds NaN or Inf values ({len(bad)} such)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    floats = [v.dtype for v in sd.values() if v.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def save(model: nn.Module, directory: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
