"""Pictures of a gaze: per-scale coloured overlays, side-by-side reconstructions, MP4/PNG writers."""
from __future__ import annotations

import os

import numpy as np

# one colour per scale, coarse to fine (RGB): blue, green, orange, red
SCALE_COLOURS = [(66, 133, 244), (52, 168, 83), (251, 188, 5), (234, 67, 53)]


def overlay(frame: np.ndarray, boxes, alpha: float = 0.2, dim: float = 0.6) -> np.ndarray:
    """Dims what was not gazed (to ``dim`` of its brightness), tints what was with its scale's colour
    (``alpha`` of it: light enough to see the picture through) and outlines each box.
    frame (H, W, 3) uint8; boxes [(x0, y0, x1, y1, scale_index)] in pixels. ``draw_scale_key`` adds the
    colour key."""
    H, W, _ = frame.shape
    out = frame.astype(np.float32)
    gazed = np.zeros((H, W), bool)
    tint = np.zeros((H, W, 3), np.float32)
    tinted = np.zeros((H, W), bool)
    for x0, y0, x1, y1, s in sorted(boxes, key=lambda b: b[4]):  # finer scales drawn last, on top
        xa, ya, xb, yb = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
        xa, ya, xb, yb = max(0, xa), max(0, ya), min(W, max(xa + 1, xb)), min(H, max(ya + 1, yb))
        gazed[ya:yb, xa:xb] = True
        tint[ya:yb, xa:xb] = SCALE_COLOURS[s % len(SCALE_COLOURS)]
        tinted[ya:yb, xa:xb] = True
    out[~gazed] *= dim
    out[tinted] = (1 - alpha) * out[tinted] + alpha * tint[tinted]
    for x0, y0, x1, y1, s in boxes:  # outlines
        xa, ya = max(0, int(round(x0))), max(0, int(round(y0)))
        xb, yb = min(W - 1, int(round(x1)) - 1), min(H - 1, int(round(y1)) - 1)
        c = SCALE_COLOURS[s % len(SCALE_COLOURS)]
        out[ya, xa:xb + 1] = c
        out[yb, xa:xb + 1] = c
        out[ya:yb + 1, xa] = c
        out[ya:yb + 1, xb] = c
    return out.clip(0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 4) -> np.ndarray:
    """Images of one height next to each other with a white gap."""
    H = images[0].shape[0]
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != H:
            raise ValueError("side_by_side: images must have one height")
        parts.append(im)
        if i < len(images) - 1:
            parts.append(np.full((H, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def legend(scales, height: int = 18) -> list[tuple[str, tuple]]:
    """(label, RGB colour) per scale, coarse to fine: the colour key of ``overlay``."""
    return [(f"{s}px", SCALE_COLOURS[i % len(SCALE_COLOURS)]) for i, s in enumerate(scales)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def draw_scale_key(image: np.ndarray, scales=(32, 64, 112, 224), corner: str = "bottom-left") -> np.ndarray:
    """The colour key of ``overlay`` drawn into a corner of ``image`` (H, W, 3) uint8: a small dark box with
    one swatch and label per scale ("32 64 112 224 px" in blue/green/orange/red). Returns a new array; the
    key is shrunk to fit narrow images (and left out below 64 px)."""
    from PIL import Image, ImageDraw

    H, W = image.shape[:2]
    if W < 64 or H < 24:
        return image.copy()
    labels = [str(s) for s in scales] + ["px"]
    size = max(8, min(20, min(W, H) // 28))
    while True:
        font = _font(size)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        bboxes = [probe.textbbox((0, 0), t, font=font) for t in labels]  # (left, top, right, bottom)
        widths = [b[2] for b in bboxes]
        sw, pad, gap = size - 2, max(2, size // 3), max(3, size // 2)
        box_w = pad * 2 + sum(sw + 2 + w + gap for w in widths[:-1]) + widths[-1]
        if box_w <= W - 4 or size <= 8:
            break
        size -= 1
    box_h = size + 2 * pad
    x0 = 2 if "left" in corner else max(0, W - box_w - 2)
    y0 = max(0, H - box_h - 2) if "bottom" in corner else 2
    img = Image.fromarray(np.ascontiguousarray(image))
    shade = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ImageDraw.Draw(shade).rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(0, 0, 0, 170))
    img = Image.alpha_composite(img.convert("RGBA"), shade).convert("RGB")
    d = ImageDraw.Draw(img)
    x, yc = x0 + pad, y0 + box_h // 2
    for i, (text, b) in enumerate(zip(labels, bboxes)):
        if i < len(scales):
            d.rectangle((x, yc - sw // 2, x + sw, yc - sw // 2 + sw), fill=SCALE_COLOURS[i % len(SCALE_COLOURS)])
            x += sw + 2
        d.text((x, yc - (b[1] + b[3]) // 2), text, fill=(255, 255, 255), font=font)  # centred on the row
        x += b[2] + gap
    return np.asarray(img)


class VideoWriter:
    """MP4 through PyAV (H.264 when the build has it, MPEG-4 otherwise); frames of one size."""

    def __init__(self, path: str, fps: float = 25.0):
        import av

        self.path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(d):
            raise FileNotFoundError(f"out: folder {d!r} does not exist")
        self._av = av
        self.container = av.open(self.path, mode="w")
        self.fps = max(1, int(round(fps or 25)))
        self.stream = None

    def write(self, frame: np.ndarray) -> None:
        av = self._av
        H, W = frame.shape[:2]
        if self.stream is None:
            for codec in ("libx264", "h264", "mpeg4"):
                try:
                    self.stream = self.container.add_stream(codec, rate=self.fps)
                    break
                except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError):
                    continue
            if self.stream is None:
                raise RuntimeError("out: this PyAV build has no MP4 video encoder")
            self.stream.width, self.stream.height = W - W % 2, H - H % 2  # yuv420p wants even sizes
            self.stream.pix_fmt = "yuv420p"
        frame = frame[: self.stream.height, : self.stream.width]
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
