"""SigLIP on the gazed patches of a real video: gaze a 16-frame clip, then run a stock transformers
SiglipVisionModel on the gazed multi-scale tokens only (ag.accelerate), next to the dense model.

    python python/siglip_gazed_video.py [VIDEO] [--siglip DIR] [--autogaze DIR] [--device cuda]

--siglip: a SigLIP / fixed-resolution SigLIP2 vision checkpoint dir (config.json + weights, loaded with
SiglipVisionModel.from_pretrained). Without it the model is SigLIP-B/16 initialised at random from its
config (nothing is downloaded): the features then mean nothing, but shapes and timings are real.
"""
from __future__ import annotations

import argparse

import torch
from gazed_vit_common import add_common_args, compare, gaze, normalise, read_clip, square

import autogaze_ext as ag


def load_siglip(path: str | None, device):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    if path:
        model = SiglipVisionModel.from_pretrained(path, attn_implementation="sdpa")
        proc = SiglipImageProcessor.from_pretrained(path)
        print(f"SigLIP: {path}")
    else:
        torch.manual_seed(0)
        model = SiglipVisionModel(SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, image_size=224, patch_size=16,
                                                     attn_implementation="sdpa"))
        proc = SiglipImageProcessor()
        print("SigLIP: no checkpoint given, so SigLIP-B/16 with RANDOM weights from its config (features are "
              "meaningless; shapes and timings are real)")
    return model.to(device).eval(), proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--siglip", default=None, help="SigLIP vision checkpoint dir (default: random init)")
    args = ap.parse_args()
    clip = read_clip(args)
    out = gaze(clip, args)
    model, proc = load_siglip(args.siglip, args.device)
    side = model.config.image_size
    video = normalise(square(clip, side), proc.image_mean, proc.image_std, args.device)
    vit = ag.accelerate(model, scales=(32, 64, 112, 224))
    compare(vit, video, out, lambda: model(video[0]).last_hidden_state)


if __name__ == "__main__":
    main()
