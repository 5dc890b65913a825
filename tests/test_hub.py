"""Checkpoints by hub id or local folder, and load_vit; the hub is replaced by a fake cache (no network)."""
from __future__ import annotations

import json
import shutil
import sys
import types
import warnings
from unittest import mock

import pytest
import torch
from torch import nn

import autogaze_ext as ag
from autogaze_ext import hub
from conftest import _need, fixture_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 16}


@pytest.fixture
def hf(monkeypatch):
    """huggingface_hub whose snapshot_download fails the test unless a test sets hf.answer (a folder or an
    exception); the calls are kept in hf.calls."""
    hf = pytest.importorskip("huggingface_hub")
    hf.calls, hf.answer = [], None

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        hf.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        if hf.answer is None:
            pytest.fail(f"snapshot_download({repo_id!r}) called for a local path")
        if isinstance(hf.answer, BaseException):
            raise hf.answer
        return str(hf.answer)

    monkeypatch.setattr(hf, "snapshot_download", snapshot_download)
    return hf


def snapshot_dir(tmp_path, repo="owner/name"):
    """An empty snapshot folder in the hub cache layout: .../models--owner--name/snapshots/<commit>/."""
    d = tmp_path / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT
    d.mkdir(parents=True)
    return d


@pytest.fixture
def hub_checkpoint(tmp_path, hf):
    """The official fixture checkpoint served as the hub repo owner/name."""
    fx = fixture_dir()
    if fx is None or not (fx / "model" / "model.safetensors").is_file():
        _need("official fixture checkpoint (model/)")
    snap = snapshot_dir(tmp_path)
    for f in (fx / "model").iterdir():
        shutil.copy(f, snap / f.name)
    hf.answer = snap
    return fx / "model", snap


def hub_error(cls, message="404 Client Error"):
    from huggingface_hub import errors

    cls = getattr(errors, cls)
    # the HTTP errors need a response; their messages only read it when given none
    return cls(message) if cls is errors.LocalEntryNotFoundError else cls(message, response=mock.MagicMock())


# --------------------------------------------------------------------------------------- resolve_pretrained

def test_local_dir_wins_over_the_hub(tmp_path, monkeypatch, hf):
    monkeypatch.chdir(tmp_path)
    ag.AutoGaze().save_pretrained(tmp_path / "owner" / "name")  # a folder named like a hub id
    assert hub.resolve_pretrained("owner/name") == "owner/name"
    model = ag.AutoGaze.from_pretrained("owner/name")
    assert model.pretrained_info == {"id": "owner/name", "revision": None, "path": str(tmp_path / "owner" / "name"),
                                     "local": True}
    with pytest.warns(UserWarning, match="local path.*ignored"):
        hub.resolve_pretrained(tmp_path / "owner" / "name", "v1")
    assert hf.calls == []


def test_hub_id_loads_checkpoint_and_processor(hub_checkpoint, hf, official_model):
    local, snap = hub_checkpoint
    model = ag.AutoGaze.from_pretrained("owner/name", revision="v1")
    assert hf.calls[0] == {"repo_id": "owner/name", "revision": "v1", "allow_patterns": hub.CHECKPOINT_PATTERNS}
    assert not any(p.endswith(".bin") for p in hub.CHECKPOINT_PATTERNS)
    assert model.pretrained_info == {"id": "owner/name", "revision": COMMIT, "path": str(snap), "local": False}
    ref = official_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())

    proc = ag.AutoGazeImageProcessor.from_pretrained("owner/name", revision="v1")
    assert proc.config == ag.AutoGazeImageProcessor.from_pretrained(local).config
    assert ag.AutoGazeConfig.from_pretrained("owner/name").raw == ag.AutoGazeConfig.from_pretrained(local).raw
    assert [c["revision"] for c in hf.calls] == ["v1", "v1", None]


def test_offline_error_names_id_cache_and_setting(hf, monkeypatch, tmp_path):
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    hf.answer = hub_error("LocalEntryNotFoundError", "Cannot find an appropriate cached snapshot folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        ag.AutoGaze.from_pretrained("nvidia/AutoGaze")
    msg = str(e.value)
    assert "'nvidia/AutoGaze'" in msg and str(tmp_path / "cache") in msg and "HF_HUB_OFFLINE is set" in msg
    assert "local folder" in msg and "\n" not in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError, match="could not be reached.*HF_HUB_OFFLINE is not set.*--revision v1`"):
        hub.resolve_pretrained("nvidia/AutoGaze", "v1")


@pytest.mark.parametrize("error, raised, match", [
    ("RepositoryNotFoundError", FileNotFoundError, r"'owner/name'.*no such repo on the hub.*hf auth login"),
    ("GatedRepoError", FileNotFoundError, r"'owner/name'.*private/gated"),
    ("RevisionNotFoundError", ValueError, r"'owner/name'.*no revision 'nope'"),
    ("HfHubHTTPError", OSError, r"'owner/name'.*failed: 500 Server Error$"),
])
def test_hub_errors_are_mapped(hf, error, raised, match):
    hf.answer = hub_error(error, "500 Server Error\ndetails on the next line")
    with pytest.raises(raised, match=match) as e:
        hub.resolve_pretrained("owner/name", "nope")
    assert type(e.value) is raised and isinstance(e.value.__cause__, getattr(hf.errors, error))


def test_missing_huggingface_hub_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"'nvidia/AutoGaze'.*autogaze-ext\[hub\]"):
        ag.AutoGaze.from_pretrained("nvidia/AutoGaze")
    assert hub.resolve_pretrained(tmp_path) == str(tmp_path)  # local paths do not need it


@pytest.mark.parametrize("name", ["./missing/dir", "a/b/c", "/abs/missing", "bad--id", "-x", "a..b", "x.git", ""])
def test_neither_path_nor_repo_id(name, hf):
    with pytest.raises(FileNotFoundError, match="no such local path, and not a Hugging Face hub repo id"):
        hub.resolve_pretrained(name)
    assert hf.calls == []


def test_checkpoint_errors_name_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json.*no such local path"):
        ag.AutoGaze.from_pretrained(tmp_path / "nothing")
    with pytest.raises(TypeError, match="AutoGaze checkpoint.*got int"):
        ag.AutoGaze.from_pretrained(3)
    with pytest.raises(TypeError, match="revision"):
        hub.resolve_pretrained("owner/name", revision=1)
    with pytest.raises(ValueError, match="revision"):
        ag.AutoGazeImageProcessor.from_pretrained(None, revision="v1")


def test_describe_pretrained(tmp_path):
    snap = snapshot_dir(tmp_path)
    (snap / "config.json").write_text("{}")
    assert hub.describe_pretrained("owner/name", snap, "main")["revision"] == COMMIT
    assert hub.describe_pretrained(snap / "config.json", snap / "config.json")["revision"] == COMMIT
    info = hub.describe_pretrained(tmp_path, tmp_path)
    assert info == {"id": str(tmp_path), "revision": None, "path": str(tmp_path), "local": True}


def test_cli_checkpoint_from_hub(hub_checkpoint, hf, tmp_path, capsys):
    pytest.importorskip("av")
    import numpy as np

    from autogaze_ext import cli
    from autogaze_ext.viz import VideoWriter

    video = tmp_path / "v.mp4"
    w = VideoWriter(str(video), 25)
    for i in range(2):
        w.write(np.full((224, 224, 3), 40 * i, np.uint8))
    w.close()
    js = tmp_path / "s.json"
    rc = cli.main(["run", str(video), "--checkpoint", "owner/name", "--max-frames", "1", "--gazing-ratio", "0.05",
                   "--json", str(js), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    stats = json.loads(js.read_text())
    assert stats["gazer"] == f"AutoGaze (owner/name@{COMMIT})" and [f["tokens"] for f in stats["frames"]] == [13]
    assert hf.calls[0]["repo_id"] == "owner/name"
    rc = cli.main(["run", str(video), "--checkpoint", "./missing/dir", "--quiet"])
    assert rc == 2 and "no such local path" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- load_vit

@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def tiny_vit(**extra):
    with pytest.warns(UserWarning, match="random-init.*timing and testing.*--vit / vit="):
        return hub.load_vit({**TINY, **extra})


def test_random_vit_is_deterministic_and_leaves_rng_alone(transformers):
    state = torch.get_rng_state()
    model, info = tiny_vit()
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(model, transformers.SiglipVisionModel) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    again, _ = tiny_vit()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    with pytest.warns(UserWarning):
        other, _ = hub.load_vit(TINY, seed=1, dtype=torch.float64)
    assert other.embeddings.patch_embedding.weight.dtype == torch.float64
    assert not torch.equal(other.embeddings.patch_embedding.weight.float(), model.embeddings.patch_embedding.weight)
    assert info == {"name": "random-init SigLIP", "family": "siglip", "random_init": True, "revision": None,
                    "path": None, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255,
                    "image_size": 32, "patch_size": 16, "hidden_size": 32}


def test_default_vit_is_siglip_b16(transformers, monkeypatch):
    assert hub.SIGLIP_B16 == {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "num_channels": 3}
    monkeypatch.setattr(hub, "SIGLIP_B16", TINY)  # building the real one takes ~5 s
    with pytest.warns(UserWarning, match="random-init SigLIP-B/16"):
        model, info = hub.load_vit()
    assert info["name"] == "random-init SigLIP-B/16" and info["random_init"]
    with pytest.warns(UserWarning):
        model, info = hub.load_vit(transformers.SiglipConfig(vision_config=TINY))
    assert model.config.hidden_size == 32


def test_bad_vit_arguments(transformers, tmp_path):
    with pytest.raises(ValueError, match="unknown SiglipVisionConfig field.*hiden_size"):
        hub.load_vit({"hiden_size": 32})
    with pytest.raises(TypeError, match="vit: expected .* got int"):
        hub.load_vit(3)
    with pytest.raises(TypeError, match="SiglipVisionConfig or SiglipConfig"):
        hub.load_vit(transformers.BertConfig())
    with pytest.raises(ValueError, match="revision"):
        hub.load_vit(None, revision="v1")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hub.load_vit(tmp_path)


def test_vit_from_local_folder_reads_normalisation(transformers, tmp_path):
    model, _ = tiny_vit()
    model.save_pretrained(tmp_path / "vit")
    assert (tmp_path / "vit" / "model.safetensors").is_file()
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "rescale_factor": 0.5}))
    loaded, info = hub.load_vit(tmp_path / "vit")
    assert isinstance(loaded, transformers.SiglipVisionModel) and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert info["image_mean"] == [0.1, 0.2, 0.3] and info["image_std"] == [0.4, 0.5, 0.6]
    assert info["rescale_factor"] == 0.5 and not info["random_init"] and info["path"] == str(tmp_path / "vit")
    assert (info["family"], info["image_size"], info["patch_size"], info["hidden_size"]) == ("siglip", 32, 16, 32)

    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5]}))
    with pytest.raises(ValueError, match="image_mean.*3 numbers"):
        hub.load_vit(tmp_path / "vit")
    for model_type, match in [("bert", r"model_type 'bert' is not supported.*'siglip'"), ("siglip2", "NaFlex")]:
        (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(ValueError, match=match):
            hub.load_vit(tmp_path / "vit")


def test_vit_from_full_siglip_takes_vision_tower(transformers, tmp_path):
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = transformers.SiglipModel(transformers.SiglipConfig(vision_config=TINY, text_config=text))
    full.save_pretrained(tmp_path)
    vit, info = hub.load_vit(tmp_path)
    assert isinstance(vit, transformers.SiglipVisionModel) and info["hidden_size"] == 32
    assert torch.equal(vit.embeddings.patch_embedding.weight, full.vision_model.embeddings.patch_embedding.weight)


def test_vit_from_hub_id(transformers, hf, tmp_path):
    model, _ = tiny_vit()
    snap = snapshot_dir(tmp_path, "google/siglip-tiny")
    model.save_pretrained(snap)
    hf.answer = snap
    _, info = hub.load_vit("google/siglip-tiny", revision="v2")
    assert hf.calls == [{"repo_id": "google/siglip-tiny", "revision": "v2", "allow_patterns": hub.CHECKPOINT_PATTERNS}]
    assert info["name"] == "google/siglip-tiny" and info["revision"] == COMMIT and info["path"] == str(snap)


class FakeTimmViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = types.SimpleNamespace(patch_size=(14, 14), img_size=(224, 224))
        self.embed_dim = 24
        self.proj = nn.Linear(2, 2)
        self.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.3, 0.2, 0.1), "input_size": (3, 448, 448)}


@pytest.fixture
def fake_timm(monkeypatch):
    timm = types.ModuleType("timm")
    timm.calls = []
    timm.list_models = lambda: ["vit_small_patch14_dinov2", "resnet50"]

    def create_model(name, pretrained=False):
        timm.calls.append((name, pretrained))
        return FakeTimmViT()

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


def test_vit_from_timm(fake_timm):
    model, info = hub.load_vit("timm/vit_small_patch14_dinov2.lvd142m", revision="abc", dtype=torch.float64)
    assert fake_timm.calls == [("hf-hub:timm/vit_small_patch14_dinov2.lvd142m@abc", True)]
    assert model.proj.weight.dtype == torch.float64 and not model.training
    assert info == {"name": "timm/vit_small_patch14_dinov2.lvd142m", "family": "timm", "random_init": False,
                    "revision": "abc", "path": None, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1],
                    "rescale_factor": 1 / 255, "image_size": 448, "patch_size": 14, "hidden_size": 24}
    hub.load_vit("vit_small_patch14_dinov2.lvd142m")  # a name timm knows, with a pretrained tag
    hub.load_vit("hf-hub:owner/vit")
    assert fake_timm.calls[1:] == [("vit_small_patch14_dinov2.lvd142m", True), ("hf-hub:owner/vit", True)]
    with pytest.raises(ValueError, match="revision.*timm/vit_small_patch14_dinov2"):
        hub.load_vit("vit_small_patch14_dinov2", revision="abc")


def test_timm_download_failure_is_clear(fake_timm, hf):
    def offline(name, pretrained=False):
        raise hub_error("LocalEntryNotFoundError", "offline")

    fake_timm.create_model = offline
    with pytest.raises(FileNotFoundError, match=r"timm model 'timm/x'.*Hugging Face cache.*`hf download timm/x`"):
        hub.load_vit("timm/x")

    def broken(name, pretrained=False):
        raise RuntimeError("Error(s) in loading state_dict\nsize mismatch")

    fake_timm.create_model = broken
    with pytest.raises(OSError, match=r"timm model 'vit_small_patch14_dinov2'.*state_dict\)"):
        hub.load_vit("vit_small_patch14_dinov2")


def test_timm_missing(monkeypatch, hf):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"timm models need timm: pip install timm.*torchvision"):
        hub.load_vit("timm/vit_small_patch14_dinov2")
    hf.answer = hub_error("RepositoryNotFoundError")  # without timm a bare name can only be a hub id
    with pytest.raises(FileNotFoundError, match="no such repo"):
        hub.load_vit("vit_small_patch14_dinov2")
