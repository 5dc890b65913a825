"""A timm ViT on the gazed patches of a video: gaze a clip of up to 16 frames with AutoGaze, then run a stock
timm VisionTransformer on the gazed multi-scale tokens only (ag.accelerate), next to the dense model.

    python python/timm_gazed_video.py [VIDEO] [--model vit_base_patch16_224] [--weights FILE] [--device cuda]
    python python/timm_gazed_video.py --tiny --frames 2 --size 64 --reps 1 --autogaze DIR   # a quick CPU run

--weights: a state dict (.safetensors or .pth) for --model. Without it the model is initialised at random
(nothing is downloaded): the features then mean nothing, but shapes and timings are real. --tiny: a 2-layer
ViT-S-like model of width 64 instead of --model. The class token is kept once per video, first in its
sequence. Needs timm, installed with the torchvision of your torch (README "Building").
"""
from __future__ import annotations

import argparse

import torch
from gazed_vit_common import add_common_args, check_args, compare, gaze, read_clip, vit_input

import autogaze_ext as ag


def load_timm(name: str, weights: str | None, tiny: bool, device):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if tiny:
        torch.manual_seed(0)
        model, name = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2), "tiny ViT"
    else:
        model = timm.create_model(name, pretrained=False)
    if weights:
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        print(f"timm: {name} with weights {weights}")
    else:
        print(f"timm: {name} with RANDOM weights (no --weights given; features are meaningless, shapes and "
              f"timings are real)")
    cfg = timm.data.resolve_data_config({}, model=model)
    return model.to(device).eval(), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--model", default="vit_base_patch16_224", help="timm VisionTransformer name (16-px patches)")
    ap.add_argument("--weights", default=None, help="state dict for --model (default: random init)")
    args = ap.parse_args()
    check_args(ap, args)
    clip = read_clip(args)
    out = gaze(clip, args)
    model, cfg = load_timm(args.model, args.weights, args.tiny, args.device)
    video = vit_input(clip, cfg["input_size"][-1], cfg["mean"], cfg["std"], args.device)
    vit = ag.accelerate(model, scales=(32, 64, 112, 224))
    compare(vit, video, out, lambda: model.forward_features(video[0]), args.reps)


if __name__ == "__main__":
    main()
