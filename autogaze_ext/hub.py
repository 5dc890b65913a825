"""Checkpoints by local folder or Hugging Face hub id, and the ViT that gazed tokens are fed to.

``resolve_pretrained("nvidia/AutoGaze")`` downloads (or finds in the hub cache) a snapshot and returns
its folder; an existing local path always wins and is returned as is. ``describe_pretrained`` gives
what to record about it (id, commit hash, folder). ``load_vit`` builds the ViT for ``accelerate()``:
a transformers SigLIP folder or hub id, a timm model, or a random-init SigLIP-B/16 for timing runs.

huggingface_hub and timm are optional: they are imported only when a hub id or a timm name is used.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any

HUB_EXTRA = "pip install 'autogaze-ext[hub]'"
VIT_EXTRA = "pip install 'autogaze-ext[vit]'"

# What a hub download fetches: configs and safetensors weights only (never pickled .bin files)
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors"]
CONFIG_PATTERNS = ["*.json"]

# The hub's repo id rule (huggingface_hub's validate_repo_id), checked here so that a mistyped local path is
# told apart from an id without huggingface_hub installed
_ID_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_ID_PART}/)?{_ID_PART}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _as_name(value: Any, argument: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected a local path or a Hugging Face hub id (str), got {type(value).__name__}")
    return os.fspath(value)


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a syntactically valid hub repo id (``owner/name`` or ``name``)."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".git")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _hub_error(e: Exception, repo_id: str, revision: str | None, what: str) -> Exception | None:
    """The clear exception for a huggingface_hub failure on repo_id, or None when e is not one."""
    from huggingface_hub import constants, errors

    at = f" (revision {revision!r})" if revision else ""
    head = f"{what} {repo_id!r}{at}: not a local path, and"
    # LocalEntryNotFoundError: offline (HF_HUB_OFFLINE or no connection) and no cached snapshot
    if isinstance(e, errors.LocalEntryNotFoundError):
        offline = constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached (HF_HUB_OFFLINE is not set)"
        return FileNotFoundError(
            f"{head} not in the Hugging Face cache {constants.HF_HUB_CACHE!r}, and {why}; download it once while "
            f"online (`hf download {repo_id}{f' --revision {revision}' if revision else ''}`) or pass a local folder")
    if isinstance(e, errors.RevisionNotFoundError):  # before RepositoryNotFoundError: both are HTTP errors
        return ValueError(f"{what} {repo_id!r}: no revision {revision!r} on the hub (expected a branch, tag or "
                          "commit hash)")
    if isinstance(e, errors.RepositoryNotFoundError):  # GatedRepoError too
        return FileNotFoundError(f"{head} no such repo on the hub (or it is private/gated: log in with "
                                 "`hf auth login`)")
    if isinstance(e, (OSError, errors.HfHubHTTPError)):
        return OSError(f"{head} downloading it from the hub failed: {_first_line(e)}")
    if isinstance(e, ValueError):  # HFValidationError: an id or revision the hub rejects
        return ValueError(f"{what} {repo_id!r}{at}: {_first_line(e)}")
    return None


def _snapshot(repo_id: str, revision: str | None, what: str, allow_patterns) -> str:
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"{what} {repo_id!r}: not a local path, and downloading it as a Hugging Face hub id needs "
                          f"huggingface_hub: {HUB_EXTRA}") from None
    try:
        return os.fspath(huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision,
                                                           allow_patterns=allow_patterns))
    except Exception as e:
        clear = _hub_error(e, repo_id, revision, what)
        if clear is None:
            raise
        raise clear from e


def resolve_pretrained(name_or_path: str | os.PathLike, revision: str | None = None, *,
                       what: str = "AutoGaze checkpoint", allow_patterns: list[str] | None = None) -> str:
    """A local folder holding ``name_or_path``'s files.

    An existing local path (folder or file) is returned unchanged, whatever the hub holds; ``revision`` then
    does not apply (a UserWarning says so). Otherwise ``name_or_path`` must be a hub repo id (``owner/name``):
    its snapshot at ``revision`` (branch, tag or commit; default the main branch) is fetched with
    ``huggingface_hub.snapshot_download`` (only ``allow_patterns`` files, if given) or found in the hub cache,
    and the snapshot folder is returned. ``what`` names the thing in error messages.

    Raises TypeError (not a str/PathLike), FileNotFoundError (no such local path and not a repo id; repo not on
    the hub; offline and not cached), ValueError (no such revision), ImportError (huggingface_hub missing),
    OSError (other download failures).
    """
    name = _as_name(name_or_path, what)
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision: expected a branch, tag or commit hash (str), got {type(revision).__name__}")
    if os.path.exists(name):
        if revision is not None:
            warnings.warn(f"{what} {name!r} is a local path; revision={revision!r} applies only to hub ids and is "
                          "ignored", UserWarning, stacklevel=2)
        return name
    if not is_repo_id(name):
        raise FileNotFoundError(f"{what} {name!r}: no such local path, and not a Hugging Face hub repo id "
                                "(owner/name)")
    return _snapshot(name, revision, what, allow_patterns)


def describe_pretrained(name_or_path: str | os.PathLike, resolved_path: str | os.PathLike,
                        revision: str | None = None) -> dict[str, Any]:
    """What to record about a loaded checkpoint: ``{"id", "revision", "path", "local"}``.

    ``revision`` is the commit hash when ``resolved_path`` is a hub cache snapshot (``.../snapshots/<hash>``,
    the layout huggingface_hub downloads into), else the revision asked for (None for a plain local folder).
    ``local`` tells whether ``name_or_path`` was a local path rather than a hub id.
    """
    name = _as_name(name_or_path, "name_or_path")
    path = os.path.abspath(_as_name(resolved_path, "resolved_path"))
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    parent, leaf = os.path.split(folder)
    commit = leaf if _COMMIT.fullmatch(leaf) and os.path.basename(parent) == "snapshots" else None
    return {"id": name, "revision": commit or revision, "path": path, "local": os.path.exists(name)}


# ----------------------------------------------------------------------------------------------------- ViTs

# SigLIP-B/16 at 224 px (google/siglip-base-patch16-224's vision tower), the default random-init ViT
SIGLIP_B16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 224, "patch_size": 16, "num_channels": 3}
# SiglipImageProcessor's defaults: x / 255, then (x - 0.5) / 0.5
_SIGLIP_NORM = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}
# model_type values SiglipVisionModel loads: a vision tower, or a full SigLIP (its vision tower is taken);
# fixed-resolution SigLIP2 checkpoints are published as "siglip"
SIGLIP_TYPES = ("siglip", "siglip_vision_model")
_NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")


def _vit_info(name: str, family: str, *, random_init: bool, image_size, patch_size, hidden_size, norm: dict,
              revision: str | None = None, path: str | None = None) -> dict[str, Any]:
    return {"name": name, "family": family, "random_init": random_init, "revision": revision, "path": path,
            "image_mean": [float(v) for v in norm["image_mean"]], "image_std": [float(v) for v in norm["image_std"]],
            "rescale_factor": float(norm["rescale_factor"]), "image_size": int(image_size),
            "patch_size": int(patch_size), "hidden_size": int(hidden_size)}


def _siglip_info(model, name: str, norm: dict, **kw) -> dict[str, Any]:
    c = model.config
    return _vit_info(name, "siglip", image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
                     norm=norm, **kw)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(f"vit: SigLIP models need transformers: {VIT_EXTRA}") from None
    return transformers


def _random_siglip(spec, seed: int):
    """A SiglipVisionModel initialised at random from SIGLIP_B16 (spec None), a dict of SiglipVisionConfig
    fields or a transformers SigLIP config; the global RNG is left as it was."""
    import torch

    if not (spec is None or isinstance(spec, dict) or hasattr(spec, "to_dict")):
        raise TypeError(f"vit: expected a local path, a hub id or timm model name (str), None, a dict of "
                        f"SiglipVisionConfig fields or a transformers SigLIP config, got {type(spec).__name__}")
    tf = _transformers()
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(tf.SiglipVisionConfig().to_dict()) - {"attn_implementation"})
        if unknown:  # SiglipVisionConfig would keep a misspelt field silently
            raise ValueError(f"vit: unknown SiglipVisionConfig field(s) {unknown}")
    if spec is None or isinstance(spec, dict):
        config = tf.SiglipVisionConfig(**{"attn_implementation": "sdpa", **(SIGLIP_B16 if spec is None else spec)})
    else:
        config = getattr(spec, "vision_config", spec)  # a full SiglipConfig: its vision tower
        if not isinstance(config, tf.SiglipVisionConfig):
            raise TypeError(f"vit: expected a SiglipVisionConfig or SiglipConfig, got {type(spec).__name__}")
    name = "random-init SigLIP-B/16" if spec is None else "random-init SigLIP"
    warnings.warn(f"vit: {name} (no checkpoint given): its features are meaningless, only good for timing and "
                  "testing; pass a real one with --vit / vit= (a SigLIP folder or hub id, or a timm model name)",
                  UserWarning, stacklevel=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.SiglipVisionModel(config)
    return model, _siglip_info(model, name, _SIGLIP_NORM, random_init=True)


def _read_norm(folder: str) -> dict:
    """The ViT's input normalisation from the folder's preprocessor_config.json, SigLIP's defaults otherwise."""
    file = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(file):
        return dict(_SIGLIP_NORM)
    try:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"vit: {file!r} is not valid JSON ({e})") from None
    norm = {k: cfg.get(k, v) for k, v in _SIGLIP_NORM.items()}
    if not cfg.get("do_rescale", True):
        norm["rescale_factor"] = 1.0
    if not cfg.get("do_normalize", True):
        norm["image_mean"], norm["image_std"] = [0.0] * 3, [1.0] * 3
    for k in ("image_mean", "image_std"):
        v = norm[k]
        v = [v] * 3 if isinstance(v, (int, float)) else v
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"vit: {k} in {file!r} must be 3 numbers (RGB), got {norm[k]!r}")
        norm[k] = v
    return norm


def _load_transformers_dir(folder: str, name: str, revision: str | None):
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"vit {name!r}: no config.json in {folder!r} (expected a transformers SigLIP "
                                "checkpoint folder: config.json + model.safetensors)")
    with open(file, encoding="utf-8") as f:
        try:
            model_type = json.load(f).get("model_type")
        except json.JSONDecodeError as e:
            raise ValueError(f"vit: {file!r} is not valid JSON ({e})") from None
    if model_type in _NAFLEX_TYPES:
        raise ValueError(f"vit {name!r}: model_type {model_type!r} is a NaFlex SigLIP2, which accelerate() does not "
                         "support; use a fixed-resolution SigLIP2 checkpoint (model_type 'siglip')")
    if model_type not in SIGLIP_TYPES:
        raise ValueError(f"vit {name!r}: model_type {model_type!r} is not supported; expected one of "
                         f"{list(SIGLIP_TYPES)} (or a timm model name)")
    model, loading = _transformers().SiglipVisionModel.from_pretrained(folder, attn_implementation="sdpa",
                                                                       output_loading_info=True)
    # a vision weight missing from the checkpoint would be left at random; the pooling head is not used by accelerate()
    missing = [k for k in loading.get("missing_keys", ()) if "head" not in k.split(".")[:2]]
    if missing:
        raise ValueError(f"vit {name!r}: the checkpoint lacks {len(missing)} vision weight(s), "
                         f"e.g. {sorted(missing)[:3]}")
    return model, _siglip_info(model, name, _read_norm(folder), random_init=False, revision=revision,
                               path=os.path.abspath(folder))


def _timm_id(name: str, revision: str | None) -> str | None:
    """The timm.create_model name for a timm model (``timm/<name>``, ``hf-hub:<id>``, or a name timm knows), else
    None. A bare name counts only when timm is installed."""
    on_hub = name.startswith(("hf-hub:", "hf_hub:", "timm/"))
    try:
        import timm
    except ImportError:
        if on_hub:
            raise ImportError(f"vit {name!r}: timm models need timm: pip install timm together with the torchvision "
                              f"build of your torch (README \"Building\")") from None
        return None
    if on_hub:
        model_id = "hf-hub:" + name if name.startswith("timm/") else name
        if revision is not None:
            if "@" in model_id:
                raise ValueError(f"revision: {name!r} already names a revision; give one or the other")
            model_id += "@" + revision
        return model_id
    if "/" in name or name.split(".", 1)[0] not in timm.list_models():  # "arch.pretrained_tag"
        return None
    if revision is not None:
        raise ValueError(f"revision: applies to hub ids; for timm model {name!r} use 'timm/{name}' with it")
    return name


def _load_timm(model_id: str, name: str, revision: str | None):
    import timm

    try:
        model = timm.create_model(model_id, pretrained=True)
    except Exception as e:
        # name the hub repo when the user gave one (timm/<name>, hf-hub:<id>[@rev]); timm picks it for bare names
        repo = model_id.split(":", 1)[1].split("@", 1)[0] if ":" in model_id else name
        from_hub = type(e).__module__.startswith("huggingface_hub")
        clear = _hub_error(e, repo, revision, "timm model") if from_hub else None
        if clear is None and isinstance(e, (OSError, RuntimeError)):  # timm's own download / load failures
            clear = OSError(f"timm model {name!r}: timm could not load its pretrained weights ({_first_line(e)}); "
                            "they are downloaded once while online, then found in the cache")
        if clear is None:
            raise
        raise clear from e
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    norm = {"image_mean": cfg.get("mean", (0.485, 0.456, 0.406)), "image_std": cfg.get("std", (0.229, 0.224, 0.225)),
            "rescale_factor": 1 / 255}  # timm's mean/std apply to [0, 1] pixels
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise TypeError(f"vit {name!r}: {type(model).__name__} has no patch_embed.patch_size (not a ViT?)")
    size = cfg.get("input_size") or (3, *model.patch_embed.img_size)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    hidden = getattr(model, "embed_dim", None) or model.num_features
    return model, _vit_info(name, "timm", random_init=False, image_size=size[-1], patch_size=patch,
                            hidden_size=hidden, norm=norm, revision=revision)


def load_vit(name_or_path=None, *, revision: str | None = None, device="cpu", dtype=None, seed: int = 0):
    """The ViT to run on gazed tokens (``accelerate()``), and what to record about it: ``(model, info)``.

    name_or_path:
      None: a SigLIP-B/16 vision tower initialised at random (``seed``; the global RNG is untouched), with a
        UserWarning: only good for timing and testing. A dict of SiglipVisionConfig fields or a transformers
        SigLIP config gives a random-init model of that shape.
      a local folder with a transformers SigLIP config.json (model_type in SIGLIP_TYPES; a full SigLIP gives its
        vision tower): ``SiglipVisionModel.from_pretrained``.
      ``timm/<name>``, ``hf-hub:<id>`` or a model name timm knows: ``timm.create_model(name, pretrained=True)``.
      otherwise a hub id of a SigLIP checkpoint: its config and safetensors files are fetched at ``revision``.
    info: ``name``, ``family`` ("siglip" / "timm"), ``random_init``, ``revision`` (the commit hash of a hub
      snapshot), ``path``, the input normalisation ``image_mean`` / ``image_std`` (3 floats, applied after
      multiplying uint8 pixels by ``rescale_factor``; from the folder's preprocessor_config.json or the model's
      pretrained_cfg), ``image_size``, ``patch_size``, ``hidden_size``.
    The model is moved to ``device`` / ``dtype``, in eval mode, with gradients off.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):  # None, a dict or a config: random init
        if revision is not None:
            raise ValueError("revision: applies to hub ids, not to a random-init ViT")
        model, info = _random_siglip(name_or_path, seed)
    else:
        name = os.fspath(name_or_path)
        model_id = None if os.path.exists(name) else _timm_id(name, revision)
        if model_id is not None:
            model, info = _load_timm(model_id, name, revision)
        else:
            folder = resolve_pretrained(name, revision, what="vit", allow_patterns=CHECKPOINT_PATTERNS)
            model, info = _load_transformers_dir(folder, name, describe_pretrained(name, folder, revision)["revision"])
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model, info
