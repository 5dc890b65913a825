"""Training data: labelled videos -> batches of 16-frame 224 x 224 clips with their collated gaze labels.

Each item is a video's first clip, decoded with PyAV (``pipeline.decode``) in a DataLoader worker process and
normalised by the AutoGaze processor (shortest edge 224, then 224 x 224 bicubic: see ``labels.read_clip``), with
the video's label lists. The batch collate stacks the clips and collates the labels with
:func:`~autogaze_ext.training.collate.collate_gazing_info` (official padding: each frame gets the batch's longest
list + 1 slots).

Order: a :class:`~torch.utils.data.distributed.DistributedSampler` (also with one process), so the order of an
epoch is a function of (seed, epoch) alone; a resumed run skips the batches it already trained on without
decoding them, and sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .labels import CLIP_LEN, label_processor, read_clip


class LabelledClips(Dataset):
    """(video path, label record) pairs -> {"video": (T, 3, 224, 224) float32, "gazing_pos": per-frame id lists,
    "task_losses": per-frame loss lists or None, "index": i, "path": str}."""

    def __init__(self, items: Sequence[tuple[str, dict]], clip_len: int = CLIP_LEN, processor=None):
        if not items:
            raise ValueError("labels: no labelled videos to train on")
        self.items = list(items)
        self.clip_len = clip_len
        self.processor = label_processor(processor)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, record = self.items[i]
        clip, _ = read_clip(path, self.clip_len, self.processor)
        return {"video": clip, "gazing_pos": copy.deepcopy(record["gazing_pos"]),
                "task_losses": copy.deepcopy(record.get("task_losses")), "index": i, "path": path}


def collate_batch(items: list[dict]) -> dict:
    """Stack the clips and collate the labels as the official trainer does."""
    from .collate import collate_gazing_info

    losses = [it["task_losses"] for it in items]
    has = [x is not None for x in losses]
    if any(has) and not all(has):
        raise ValueError("labels: some videos of the batch have task losses and some not; give all or none")
    info = collate_gazing_info([it["gazing_pos"] for it in items], losses if all(has) else None,
                               num_frames=items[0]["video"].shape[0])
    return {"video": torch.stack([it["video"] for it in items]), "gazing_info": info,
            "index": torch.tensor([it["index"] for it in items]), "path": [it["path"] for it in items]}


class SkipSampler(Sampler):
    """Yields a sampler's indices after dropping the first ``skip`` (a resumed epoch)."""

    def __init__(self, sampler, skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for n, i in enumerate(self.sampler):
            if n >= self.skip:
                yield i

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def epoch_loader(dataset: Dataset, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                 skip_batches: int = 0, workers: int = 2, shuffle: bool = True, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one epoch for this process: DistributedSampler order (``seed``, ``epoch``), whole batches
    only (drop_last, so every process takes the same number of steps), the first ``skip_batches`` left out."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    per_epoch = len(sampler) // batch_size
    if per_epoch < 1:
        raise ValueError(f"--batch-size: {batch_size} per process is more than the {len(sampler)} clips each of the "
                         f"{world_size} process(es) gets from {len(dataset)} labelled videos")
    kept = SkipSampler(sampler, skip_batches * batch_size)
    gen = torch.Generator().manual_seed(seed + 7919 * epoch)  # worker seeds: not from the global RNG
    return DataLoader(dataset, batch_size=batch_size, sampler=kept, num_workers=workers, collate_fn=collate_batch,
                      drop_last=True, pin_memory=pin_memory, generator=gen,
                      persistent_workers=False, prefetch_factor=2 if workers else None)


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    per_rank = -(-n // world_size)  # DistributedSampler pads to a multiple of world_size
    return per_rank // batch_size
