"""SigLIP on the gazed patches of a video: gaze a clip of up to 16 frames with AutoGaze, then run a stock
transformers SiglipVisionModel on the gazed multi-scale tokens only (ag.accelerate), next to the dense model.

    python python/siglip_gazed_video.py [VIDEO] [--siglip DIR] [--autogaze DIR_OR_HUB_ID] [--device cuda]
    python python/siglip_gazed_video.py --tiny --frames 2 --size 64 --reps 1 --autogaze DIR   # a quick CPU run

--siglip: a SigLIP / fixed-resolution SigLIP2 vision checkpoint folder (SiglipVisionModel.from_pretrained).
Without it the model is SigLIP-B/16 (or, with --tiny, a 2-layer SigLIP of width 64) initialised at random
from its config, nothing downloaded: the features then mean nothing, but shapes and timings are real.
Needs transformers (pip install 'autogaze-ext[vit]').
"""
from __future__ import annotations

import argparse

import torch
from gazed_vit_common import add_common_args, check_args, compare, gaze, read_clip, vit_input

import autogaze_ext as ag


def load_siglip(path: str | None, tiny: bool, device):
    """(model, mean, std): the vision model and its input normalisation."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    if path:
        model = SiglipVisionModel.from_pretrained(path, attn_implementation="sdpa")
        proc = SiglipImageProcessor.from_pretrained(path)
        print(f"SigLIP: {path}")
        return model.to(device).eval(), proc.image_mean, proc.image_std
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2) if tiny else \
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**size, image_size=224, patch_size=16, attn_implementation="sdpa"))
    print(f"SigLIP: no checkpoint given, so {'a tiny SigLIP' if tiny else 'SigLIP-B/16'} with RANDOM weights "
          f"(features are meaningless; shapes and timings are real)")
    return model.to(device).eval(), [0.5] * 3, [0.5] * 3  # SigLIP's normalisation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--siglip", default=None, help="SigLIP vision checkpoint folder (default: random init)")
    args = ap.parse_args()
    check_args(ap, args)
    clip = read_clip(args)
    out = gaze(clip, args)
    model, mean, std = load_siglip(args.siglip, args.tiny, args.device)
    video = vit_input(clip, model.config.image_size, mean, std, args.device)
    vit = ag.accelerate(model, scales=(32, 64, 112, 224))
    compare(vit, video, out, lambda: model(video[0]).last_hidden_state, args.reps)


if __name__ == "__main__":
    main()
