"""A timm ViT on the gazed patches of a real video: gaze a 16-frame clip, then run a stock timm
VisionTransformer on the gazed multi-scale tokens only (ag.accelerate), next to the dense model.

    python python/timm_gazed_video.py [VIDEO] [--model vit_base_patch16_224] [--weights FILE] [--device cuda]

--weights: a state dict (.safetensors or .pth) for --model. Without it the model is initialised at random
(nothing is downloaded): the features then mean nothing, but shapes and timings are real. The class token
is kept once per video, first in its sequence.
"""
from __future__ import annotations

import argparse

import torch
from gazed_vit_common import add_common_args, compare, gaze, normalise, read_clip, square

import autogaze_ext as ag


def load_timm(name: str, weights: str | None, device):
    import timm

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
    clip = read_clip(args)
    out = gaze(clip, args)
    model, cfg = load_timm(args.model, args.weights, args.device)
    video = normalise(square(clip, cfg["input_size"][-1]), cfg["mean"], cfg["std"], args.device)
    vit = ag.accelerate(model, scales=(32, 64, 112, 224))
    compare(vit, video, out, lambda: model.forward_features(video[0]))


if __name__ == "__main__":
    main()
