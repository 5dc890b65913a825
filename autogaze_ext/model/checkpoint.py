"""Official checkpoint files: ``model.safetensors`` (or sharded / ``pytorch_model.bin``) with
keys ``gazing_model.*`` (spec §4.4). Loading is strict: missing, unexpected or mis-shaped
weights raise a ValueError that names them."""
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


def read_state_dict(path: str) -> dict:
    if os.path.isfile(path):
        files = [path]
    elif os.path.isfile(os.path.join(path, WEIGHTS)):
        files = [os.path.join(path, WEIGHTS)]
    elif os.path.isfile(os.path.join(path, INDEX)):
        with open(os.path.join(path, INDEX), encoding="utf-8") as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shard_names]
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        return torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"checkpoint: no {WEIGHTS} (or {INDEX}, pytorch_model.bin) in {path!r}")
    sd: dict = {}
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"checkpoint: shard {f!r} listed in the index is missing")
        sd.update(_load_safetensors(f))
    return sd


def load_into(model: nn.Module, path: str) -> None:
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
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def save(model: nn.Module, directory: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
