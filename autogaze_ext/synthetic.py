"""A small generated video: textured objects moving over a static textured background.
Needs no files or downloads; used by the demo and by tests."""
from __future__ import annotations

import numpy as np


def moving_objects_clip(frames: int = 16, height: int = 224, width: int = 224, objects: int = 3,
                        seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"frames/height/width: expected >= 1 frame of at least 8x8, got {frames}x{height}x{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # static background: soft colour gradient plus low-contrast stripes
    bg = np.stack([
        90 + 60 * xx / width,
        110 + 40 * yy / height,
        140 + 20 * np.sin(xx / 9.0) * np.cos(yy / 13.0),
    ], axis=-1)
    size = max(8, min(height, width) // 5)
    pos = rng.uniform([0, 0], [height - size, width - size], (objects, 2))
    vel = rng.uniform(-1, 1, (objects, 2)) * (min(height, width) / 40.0)
    colours = rng.uniform(40, 255, (objects, 3))
    oy, ox = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = 0.6 + 0.4 * ((oy // 4 + ox // 4) % 2)  # checkerboard: fine detail worth gazing at
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = bg.copy()
        for k in range(objects):
            y, x = pos[k].astype(int)
            img[y:y + size, x:x + size] = colours[k] * texture[..., None]
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
        pos += vel
        for d, lim in ((0, height - size), (1, width - size)):  # bounce off the borders
            hit = (pos[:, d] < 0) | (pos[:, d] > lim)
            vel[hit, d] *= -1
            pos[:, d] = np.clip(pos[:, d], 0, lim)
    return out
