"""What a gaze keeps: repaint each frame from its gazed tokens only (the greedy gazer's model of
reconstruction), for side-by-side pictures. Frame 0 starts from its mean colour, later frames from
the previous reconstruction; each gazed token paints its region with the frame seen at the token's
scale, finer scales over coarser ones."""
from __future__ import annotations

import torch

from .greedy import scale_paints


@torch.no_grad()
def reconstruct_tiles(video: torch.Tensor, out, scales) -> torch.Tensor:
    """video (N, T, 3, S, S) normalised, out: a GazeOutput for it -> (N, T, 3, S, S)."""
    N, T, _, S, _ = video.shape
    scales = sorted(scales)
    masks = out.gazing_mask  # per scale (N, T, g*g)
    recon = video[:, 0].mean(dim=(2, 3), keepdim=True).expand(N, 3, S, S).clone()
    frames = []
    for t in range(T):
        paints = scale_paints(video[:, t].float(), scales, S)
        for s, m in enumerate(masks):  # coarse to fine: finer tokens paint over coarser ones
            g = int(round(m.shape[-1] ** 0.5))
            cs = S // g
            region = m[:, t].view(N, g, g).repeat_interleave(cs, 1).repeat_interleave(cs, 2) > 0
            recon = torch.where(region[:, None], paints[:, s], recon)
        frames.append(recon.clone())
    return torch.stack(frames, dim=1)


def denormalize(x: torch.Tensor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> torch.Tensor:
    """Inverse of the AutoGaze processor's normalisation: (..., 3, H, W) -> uint8 in [0, 255]."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (((x * s + m) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
