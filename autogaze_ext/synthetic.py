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


# ------------------------------------------------------------------------------------ varied scenes
# Kinds of scene for training and evaluating gazers, each a different trade-off between what changes and
# what does not: objects over a textured or a flat background, a camera pan over a textured world (everything
# moves), an almost static scene, and noise next to flat regions (detail that never repeats beside regions
# that need one coarse token).
SCENE_KINDS = ("objects_textured", "objects_flat", "pan", "static", "noise")


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: random values on a grid of ``cell`` pixels, bilinearly interpolated."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = np.arange(h, dtype=np.float32) / cell
    x = np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB in [0, 255]: one of stripes, checkerboard, multi-octave value noise or a
    gradient with blobs, between two random colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:  # oriented stripes
        ang, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
    elif kind == 1:  # checkerboard
        c = int(rng.integers(3, 16))
        t = ((yy // c + xx // c) % 2).astype(np.float32)
    elif kind == 2:  # value noise, coarse to fine
        t = sum(_value_noise(rng, h, w, cell) * wgt for cell, wgt in ((32, 0.5), (8, 0.3), (2, 0.2)))
    else:  # smooth gradient and soft blobs
        t = _value_noise(rng, h, w, float(rng.uniform(40, 90)))
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def scene_video(frames: int = 16, size: int = 224, seed: int = 0, kind: str | None = None,
                speed: float | None = None) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB: one scene of ``kind`` (default: ``SCENE_KINDS[seed % 5]``) whose
    content, motion and ``speed`` (pixels per frame; default drawn log-uniformly in [0.5, 8]) follow from
    ``seed`` alone."""
    if frames < 1 or size < 32:
        raise ValueError(f"frames/size: expected >= 1 frame of at least 32 x 32, got {frames} x {size}")
    kind = SCENE_KINDS[seed % len(SCENE_KINDS)] if kind is None else kind
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind: expected one of {SCENE_KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, 0x5CE2E])
    speed = float(np.exp(rng.uniform(np.log(0.5), np.log(8.0)))) if speed is None else float(speed)
    if not speed >= 0:
        raise ValueError(f"speed: expected pixels per frame >= 0, got {speed}")
    S = size
    out = np.empty((frames, S, S, 3), np.uint8)
    if kind == "pan":  # a window moving over a larger textured world; a few objects on it
        span = int(np.ceil(speed * frames)) + 1
        world = _texture(rng, S + span, S + span)
        for _ in range(int(rng.integers(1, 4))):
            h, w = (int(v) for v in rng.integers(S // 10, S // 3, 2))
            y, x = int(rng.integers(0, S + span - h)), int(rng.integers(0, S + span - w))
            world[y:y + h, x:x + w] = _texture(rng, h, w)
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = np.sin(ang) * speed, np.cos(ang) * speed
        y0 = span - 1 if dy < 0 else 0
        x0 = span - 1 if dx < 0 else 0
        for t in range(frames):
            y = int(np.clip(round(y0 + dy * t), 0, span - 1))
            x = int(np.clip(round(x0 + dx * t), 0, span - 1))
            out[t] = np.clip(world[y:y + S, x:x + S], 0, 255).astype(np.uint8)
        return out
    if kind == "objects_flat":
        bg = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (S, S, 3)).copy()
    else:
        bg = _texture(rng, S, S)
    noisy = []  # (y, x, h, w, temporal) rectangles of noise
    if kind == "noise":
        half = int(rng.integers(S // 3, 2 * S // 3))
        flat = rng.uniform(0, 255, 3).astype(np.float32)
        if rng.random() < 0.5:
            bg[:, :half] = flat
        else:
            bg[:half] = flat
        for temporal in (True, False):
            h, w = (int(v) for v in rng.integers(S // 6, S // 2, 2))
            noisy.append((int(rng.integers(0, S - h)), int(rng.integers(0, S - w)), h, w, temporal))
    n_obj = {"objects_textured": int(rng.integers(1, 6)), "objects_flat": int(rng.integers(1, 6)),
             "static": int(rng.integers(0, 2)), "noise": 1}[kind]
    sizes = rng.integers(S // 10, S // 3, (n_obj, 2))
    pos = rng.uniform(0, 1, (n_obj, 2)) * (S - sizes)
    ang = rng.uniform(0, 2 * np.pi, n_obj)
    obj_speed = speed * (0.25 if kind == "static" else 1.0) * rng.uniform(0.5, 1.5, n_obj)
    vel = np.stack([np.sin(ang), np.cos(ang)], 1) * obj_speed[:, None]
    textures = [_texture(rng, int(h), int(w)) for h, w in sizes]
    static_noise = {i: rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
                    for i, (_, _, h, w, temporal) in enumerate(noisy) if not temporal}
    for t in range(frames):
        img = bg.copy()
        for i, (y, x, h, w, temporal) in enumerate(noisy):
            img[y:y + h, x:x + w] = rng.uniform(0, 255, (h, w, 3)) if temporal else static_noise[i]
        for k in range(n_obj):
            y, x = (int(round(v)) for v in pos[k])
            h, w = sizes[k]
            img[y:y + h, x:x + w] = textures[k]
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
        pos += vel
        for d in (0, 1):  # bounce off the borders
            lim = S - sizes[:, d]
            hit = (pos[:, d] < 0) | (pos[:, d] > lim)
            vel[hit, d] *= -1
            pos[:, d] = np.clip(pos[:, d], 0, lim)
    return out
