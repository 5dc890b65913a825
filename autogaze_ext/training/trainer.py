"""Training a gazer: NTP on gaze labels, or GRPO with the greedy painter's reconstruction error as reward.

One process per device; the same code runs alone or under ``torchrun --nproc-per-node N`` (DistributedDataParallel:
gloo on the CPU, nccl on CUDA; every process reads its share of each epoch through a DistributedSampler, gradients
are averaged, only rank 0 writes). Per step: AdamW, bf16 autocast on CUDA (``precision="bf16"``, the official
training forward's), gradient clipping, a linear warm-up then cosine decay of the learning rate.

``--out`` is a checkpoint folder in the official format (``config.json`` + ``model.safetensors`` +
``preprocessor_config.json``; ``AutoGaze.from_pretrained`` of ours and of the official code load it) that also
holds ``training_state.safetensors`` (weights, optimizer moments, random-generator states; the step, scheduler and
settings as JSON in its metadata, copied readably to ``training_state.json``) and ``train_log.jsonl``. Running the
same command again resumes from the last saved step and gives the parameters an uninterrupted run would (same
seed, same process count): the data order is a function of (seed, epoch), GRPO draws from generators whose states
are saved, and the state file is replaced atomically. Nothing is pickled.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._files import write_atomic

STATE_FILE = "training_state.safetensors"
STATE_JSON = "training_state.json"
LOG_FILE = "train_log.jsonl"
STATE_VERSION = 1
# settings that must not change when a run resumes (the resumed run would not be the same run)
RESUME_FIXED = ("algo", "batch_size", "seed", "world_size", "clip_len", "group_size")


@dataclass
class TrainConfig:
    videos: list = field(default_factory=list)  # video files or folders (searched recursively)
    labels: str | None = None  # label JSON (official format); required for ntp, optional for grpo
    out: str = "autogaze-trained"
    init: str | None = None  # checkpoint folder or hub id to start from; None: random init
    revision: str | None = None
    model_config: str | None = None  # config.json of the architecture for a random init (default: released)
    algo: str = "ntp"
    steps: int = 1000
    batch_size: int = 8  # clips per process and step (GRPO: videos; each gives group_size trajectories)
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int | None = None  # default: 5% of steps
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 2
    save_every: int = 500
    log_every: int = 10
    device: str | None = None
    precision: str = "bf16"  # bf16 autocast on CUDA ("fp32": none); the CPU computes in fp32 either way
    optimize_task_loss_prediction: bool = True  # NTP: when the labels have task losses
    clip_len: int = 16
    # GRPO
    group_size: int = 12
    discount: float = 0.995
    gazing_ratio: float = 0.1
    task_loss_requirement: float | None = None
    temperature_start: float = 3.0
    temperature_end: float = 0.3
    reward_frames: int = 2  # frames per clip whose reconstruction error is a reward (official: 16 * 0.125)
    quiet: bool = False

    def check(self) -> None:
        def bad(opt, want, got):
            raise ValueError(f"{opt}: expected {want}, got {got!r}")

        if self.algo not in ("ntp", "grpo"):
            bad("--algo", "'ntp' or 'grpo'", self.algo)
        for opt, v, lo in (("--steps", self.steps, 1), ("--batch-size", self.batch_size, 1),
                           ("--workers", self.workers, 0), ("--save-every", self.save_every, 1),
                           ("--log-every", self.log_every, 1), ("--clip-len", self.clip_len, 1),
                           ("--group-size", self.group_size, 1), ("--reward-frames", self.reward_frames, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                bad(opt, f"an int >= {lo}", v)
        if self.clip_len > 16:
            bad("--clip-len", "at most 16 (the model's clip length)", self.clip_len)
        if self.reward_frames > self.clip_len:
            bad("--reward-frames", f"at most --clip-len ({self.clip_len})", self.reward_frames)
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            bad("--warmup-steps", "an int >= 0", self.warmup_steps)
        for opt, v in (("--lr", self.lr), ("--grad-clip", self.grad_clip)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(opt, "a finite number > 0", v)
        for opt, v in (("--min-lr", self.min_lr), ("--weight-decay", self.weight_decay)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(opt, "a finite number >= 0", v)
        if self.min_lr > self.lr:
            bad("--min-lr", f"at most --lr ({self.lr})", self.min_lr)
        if not 0 < self.gazing_ratio <= 1:
            bad("--gazing-ratio", "a ratio in (0, 1]", self.gazing_ratio)
        if not 0 <= self.discount <= 1:
            bad("--discount", "a value in [0, 1]", self.discount)
        if self.task_loss_requirement is not None and not self.task_loss_requirement >= 0:
            bad("--task-loss-requirement", "a value >= 0", self.task_loss_requirement)
        for opt, v in (("--temperature-start", self.temperature_start), ("--temperature-end", self.temperature_end)):
            if not (math.isfinite(v) and v > 0):
                bad(opt, "a temperature > 0", v)
        if self.precision not in ("bf16", "fp32"):
            bad("--precision", "'bf16' or 'fp32'", self.precision)
        if self.init and self.model_config:
            raise ValueError("--model-config: applies to a random init; --init brings its own config.json")

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


# -------------------------------------------------------------------------------------------- setup
def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 when run alone)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step`` (0-based, before the step's update): linear warm-up over ``warmup``
    steps, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def init_weights(model, seed: int) -> None:
    """A fresh model as the official constructor leaves it: the LLaMA decoder's linear and embedding weights
    N(0, initializer_range) (transformers' init), the rest PyTorch's defaults; seeded."""
    from torch import nn

    std = float(model.config.raw.get("gaze_model_config", {}).get("gaze_decoder_config", {})
                .get("initializer_range", 0.02))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.gazing_model.gaze_decoder.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()


def build_model(cfg: TrainConfig):
    """(model, processor) for training: from --init, or random init of the released (or --model-config)
    architecture."""
    from ..config import AutoGazeConfig
    from ..model import AutoGaze
    from ..processor import AutoGazeImageProcessor

    if cfg.init:
        model = AutoGaze.from_pretrained(cfg.init, revision=cfg.revision)
        folder = model.pretrained_info["path"]
        has_proc = os.path.isfile(os.path.join(folder, "preprocessor_config.json"))
        proc = AutoGazeImageProcessor.from_pretrained(folder) if has_proc else AutoGazeImageProcessor()
    else:
        conf = AutoGazeConfig.from_pretrained(cfg.model_config) if cfg.model_config else AutoGazeConfig()
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = AutoGaze(conf)
        init_weights(model, cfg.seed)
        proc = AutoGazeImageProcessor()
    return model.float(), proc


# ------------------------------------------------------------------------------------ state files
def _rng_json() -> dict:
    ver, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [ver, list(state), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}


def _set_rng_json(d: dict) -> None:
    ver, state, gauss = d["python"]
    random.setstate((ver, tuple(state), gauss))
    n = d["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def read_state(out: str) -> tuple[dict, dict] | None:
    """(tensors, metadata) of the training state in ``out``, or None when there is none."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = os.path.join(out, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("autogaze_training_state", "null"))
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"--out: the training state {path!r} cannot be read ({e}); remove it to start afresh") \
            from None
    if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
        raise ValueError(f"--out: {path!r} is not a training state of this version")
    return tensors, meta


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Builds everything from a :class:`TrainConfig` (resuming when ``out`` holds a training state); ``train()``
    runs to ``steps``. ``step_on(batch)`` is one optimizer step (the benchmark times it)."""

    def __init__(self, cfg: TrainConfig, dataset=None):
        from ..pipeline.cli import check_device

        cfg.check()
        self.cfg = cfg
        self.rank, self.world, self.local_rank = dist_env()
        dev = check_device(cfg.device)
        if dev.type == "cuda" and self.world > 1:
            dev = torch.device("cuda", self.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.device = dev
        self._init_dist()
        self.is_main = self.rank == 0
        self.model, self.processor = build_model(cfg)
        self.model.to(dev).train()
        self.ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        kw = {"fused": True} if dev.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                           **kw)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * cfg.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.steps, self.warmup, cfg.min_lr / cfg.lr))
        self.generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank)  # GRPO draws
        self.step = 0
        self.dataset = dataset if dataset is not None else self._dataset()
        self.per_epoch = self._per_epoch()
        self._stop = False
        self._resume()

    # ---- setup pieces
    def _init_dist(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def _dataset(self):
        from .cli import find_videos
        from .data import LabelledClips
        from .labels import match_videos, read_labels

        if self.cfg.algo == "ntp" and not self.cfg.labels:
            raise ValueError("--labels: NTP training needs a label file (autogaze-ext label VIDEOS --out labels.json)")
        if not self.cfg.videos:
            raise ValueError("--videos: give the folder (or files) of the training videos")
        videos = find_videos(list(self.cfg.videos))
        if self.cfg.labels:
            labels = read_labels(self.cfg.labels, clip_len=self.cfg.clip_len)
            items = [(v, labels[k]) for v, k in match_videos(labels, videos)]
        else:  # GRPO needs no labels
            items = [(v, {"gazing_pos": [[] for _ in range(self.cfg.clip_len)]}) for v in videos]
        return LabelledClips(items, self.cfg.clip_len, self.processor)

    def _per_epoch(self) -> int:
        from .data import batches_per_epoch

        n = batches_per_epoch(len(self.dataset), self.cfg.batch_size, self.world)
        if n < 1:
            raise ValueError(f"--batch-size: {self.cfg.batch_size} clips per process and step, but "
                             f"{len(self.dataset)} labelled videos over {self.world} process(es) give fewer")
        return n

    # ---- resume
    def _resume(self) -> None:
        cfg = self.cfg
        got = read_state(cfg.out) if os.path.isdir(cfg.out) else None
        if got is None:
            if os.path.isfile(os.path.join(cfg.out, "model.safetensors")):
                raise ValueError(f"--out: {cfg.out!r} holds a checkpoint without a training state; to start from it "
                                 f"pass --init {cfg.out} and a new --out")
            return
        tensors, meta = got
        old = meta["config"]
        mine = {**cfg.as_json(), "world_size": self.world}
        for k in RESUME_FIXED:
            if old.get(k) != mine.get(k):
                opt = "process count (torchrun --nproc-per-node)" if k == "world_size" else "--" + k.replace("_", "-")
                raise ValueError(f"{opt}: the run in {cfg.out!r} used {old.get(k)!r}, this command {mine.get(k)!r}; "
                                 f"resume with the same value, or give a new --out")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, name = k.split("/", 2)
                state.setdefault(int(idx), {})[name] = v.to(self.device) if name != "step" else v
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng/torch"])
        gen = tensors.get(f"rng/generator/{self.rank}")
        if gen is not None:
            self.generator.set_state(gen)
        if self.device.type == "cuda" and f"rng/cuda/{self.rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng/cuda/{self.rank}"], self.device)
        _set_rng_json(meta["rng"])
        self.step = meta["step"]
        if self.is_main:
            print(f"resuming {cfg.out} at step {self.step} of {cfg.steps}", file=sys.stderr)

    # ---- saving
    def save(self) -> None:
        """Checkpoint files (official format) and the training state; every process must call it (the
        generator states are gathered), rank 0 writes."""
        from safetensors.torch import save_file

        gens = self._gather(self.generator.get_state())
        cudas = self._gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else []
        if not self.is_main:
            return
        os.makedirs(self.cfg.out, exist_ok=True)
        tensors = {f"model/{k}": v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        sd = self.optimizer.state_dict()
        for idx, st in sd["state"].items():
            for name, v in st.items():
                t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
                tensors[f"optim/{idx}/{name}"] = t.detach().to("cpu").contiguous()
        tensors["rng/torch"] = torch.get_rng_state()
        for r, g in enumerate(gens):
            tensors[f"rng/generator/{r}"] = g
        for r, g in enumerate(cudas):
            tensors[f"rng/cuda/{r}"] = g
        meta = {"version": STATE_VERSION, "step": self.step, "config": {**self.cfg.as_json(), "world_size": self.world},
                "param_groups": sd["param_groups"], "scheduler": _json_safe(self.scheduler.state_dict()),
                "rng": _rng_json(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        out = self.cfg.out
        # the official checkpoint files first, each replaced atomically; the state file (what resume reads, weights
        # included) last, so a kill at any point leaves a consistent state to resume from
        self._save_official(out)
        write_atomic(os.path.join(out, STATE_FILE),
                lambda p: save_file(tensors, p, metadata={"autogaze_training_state": json.dumps(meta),
                                                          "format": "pt"}))
        readable = {k: v for k, v in meta.items() if k != "rng"}
        write_atomic(os.path.join(out, STATE_JSON),
                lambda p: open(p, "w", encoding="utf-8").write(json.dumps(readable, indent=2) + "\n"))

    def _save_official(self, out: str) -> None:
        from safetensors.torch import save_file

        sd = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        write_atomic(os.path.join(out, "model.safetensors"), lambda p: save_file(sd, p, metadata={"format": "pt"}))
        cfg = self.model.config.raw
        write_atomic(os.path.join(out, "config.json"),
                lambda p: open(p, "w", encoding="utf-8").write(json.dumps(cfg, indent=2, sort_keys=True) + "\n"))
        pc = self.processor.config
        write_atomic(os.path.join(out, "preprocessor_config.json"),
                lambda p: open(p, "w", encoding="utf-8").write(json.dumps(pc, indent=2, sort_keys=True) + "\n"))

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if self.world == 1:
            return [t.cpu()]
        import torch.distributed as dist

        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        x = t.to(dev)
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x)
        return [p.cpu() for p in parts]

    # ---- one step
    def _autocast(self):
        on = self.device.type == "cuda" and self.cfg.precision == "bf16"
        return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()

    def _score(self, video, info):
        """Teacher-forced scores through the (DDP-wrapped) model's forward, as the official trainer calls it."""
        with self._autocast():
            out = self.ddp({"video": video}, gazing_info=info, generate_only=False,
                           precision="bf16" if self.cfg.precision == "bf16" else "fp32")
        return out["log_action_probs"].float(), out["task_loss_prediction"].float()

    def _ntp_losses(self, batch) -> tuple[dict, int, int]:
        from .losses import ntp_loss

        video = batch["video"].to(self.device, non_blocking=True)
        info = {k: v.to(self.device, non_blocking=True) for k, v in batch["gazing_info"].items()}
        lap, tlp = self._score(video, info)
        opt = self.cfg.optimize_task_loss_prediction and "task_losses" in info
        losses = ntp_loss(lap, info["if_padded_gazing"], tlp, info.get("task_losses"),
                          optimize_task_loss_prediction=opt)
        tokens = int((~info["if_padded_gazing"]).sum())
        return losses, tokens, video.shape[0]

    def temperature(self) -> float:
        c = self.cfg
        return c.temperature_start * (c.temperature_end / c.temperature_start) ** (self.step / max(1, c.steps))

    def _grpo_losses(self, batch) -> tuple[dict, int, int]:
        from .labels import frame_errors
        from .losses import grpo_loss, sample_group

        c = self.cfg
        video = batch["video"].to(self.device, non_blocking=True)
        T = video.shape[1]
        self.model.eval()  # sampling is explicit (do_sample), eval keeps the model's own train-mode choices out
        video_g, out = sample_group(self.model, video, c.group_size, gazing_ratio=c.gazing_ratio,
                                    task_loss_requirement=c.task_loss_requirement, temperature=self.temperature(),
                                    generator=self.generator, score=False)
        self.model.train()
        errs = frame_errors(video_g, out.gazing_mask, self.model.scales)  # (G*B, T)
        frames = torch.randperm(T, generator=self.generator)[: c.reward_frames].tolist()
        counts = out.num_gazing_each_frame.tolist()
        reward = -errs[:, frames].float()
        traj_len = [sum(counts[: f + 1]) for f in frames]
        pads = out.if_padded_gazing
        # the task-loss head's targets: a reconstructed frame's error at its last real slot (next slot padded or
        # the frame's end), as the official reconstruction task lays them out
        task_losses = torch.zeros(pads.shape, device=self.device)
        mask = torch.zeros(pads.shape, device=self.device)
        starts = np.cumsum([0] + counts)
        for i, f in enumerate(frames):
            s, e = int(starts[f]), int(starts[f + 1])
            nxt = torch.cat([pads[:, s + 1: e], torch.ones_like(pads[:, :1])], dim=1).float()
            task_losses[:, s:e] = errs[:, f: f + 1].float() * nxt
            mask[:, s:e] = nxt
        info = {"gazing_pos": out.gazing_pos, "if_padded_gazing": pads, "num_gazing_each_frame":
                out.num_gazing_each_frame}
        lap, tlp = self._score(video_g, info)
        losses = grpo_loss(lap, pads, reward, traj_len, group_size=c.group_size, discount_factor=c.discount,
                           task_loss_prediction=tlp, task_losses=task_losses, task_losses_mask=mask,
                           optimize_task_loss_prediction=c.optimize_task_loss_prediction)
        losses = {**{k: losses[k] for k in ("loss", "grpo_loss", "task_loss_prediction_loss")},
                  "reward": reward.mean(dim=1)}
        return losses, int((~pads).sum()), video.shape[0]

    def step_on(self, batch) -> dict:
        """One optimizer step on this process's batch; returns its local metrics (floats)."""
        t0 = time.perf_counter()
        get = self._ntp_losses if self.cfg.algo == "ntp" else self._grpo_losses
        losses, tokens, clips = get(batch)
        loss = losses["loss"].mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"training: the loss is {float(loss)} at step {self.step}; lower --lr or check "
                                     f"the labels")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        m = {k: float(v.detach().float().mean()) for k, v in losses.items()}
        m.update(loss=float(loss.detach()), grad_norm=float(norm), lr=lr, tokens=tokens, clips=clips,
                 seconds=time.perf_counter() - t0)
        return m

    # ---- the loop
    def _reduce(self, vals: list[float]) -> list[float]:
        if self.world == 1:
            return vals
        import torch.distributed as dist

        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor(vals, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return t.tolist()

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def train(self, until: int | None = None) -> int:
        """Train to ``cfg.steps`` (or stop after step ``until``: a deliberate interruption, saved first). Returns
        the step reached. SIGINT/SIGTERM stop every process at the next step boundary, after a checkpoint."""
        from tqdm import tqdm

        from .data import epoch_loader

        c = self.cfg
        if self.step >= c.steps:
            if self.is_main:
                print(f"{c.out}: already trained to step {self.step} of {c.steps}", file=sys.stderr)
            return self.step
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
            if _main_thread() else {}
        log = None
        if self.is_main:
            os.makedirs(c.out, exist_ok=True)
            _truncate_log(os.path.join(c.out, LOG_FILE), self.step)
            log = open(os.path.join(c.out, LOG_FILE), "a", encoding="utf-8")
        bar = tqdm(total=c.steps, initial=self.step, unit="step", disable=c.quiet or not self.is_main,
                   dynamic_ncols=True, file=sys.stderr)
        acc: dict = {}
        t_log = time.perf_counter()
        stopped = False
        try:
            while self.step < c.steps and not stopped:
                epoch, skip = divmod(self.step, self.per_epoch)
                loader = epoch_loader(self.dataset, c.batch_size, epoch, c.seed, self.rank, self.world, skip,
                                      c.workers, pin_memory=self.device.type == "cuda")
                for batch in loader:
                    m = self.step_on(batch)
                    for k, v in m.items():
                        acc[k] = acc.get(k, 0.0) + v
                    acc["n"] = acc.get("n", 0) + 1
                    stop_now = self._reduce([float(self._stop)])[0] > 0 or (until is not None and self.step >= until)
                    last = self.step >= c.steps
                    if self.step % c.log_every == 0 or last or stop_now:
                        self._log(acc, t_log, epoch, log, bar)
                        acc, t_log = {}, time.perf_counter()
                    if self.step % c.save_every == 0 or last or stop_now:
                        self.save()
                    bar.update(1)
                    if last or stop_now:
                        stopped = stop_now and not last
                        break
        finally:
            bar.close()
            if log is not None:
                log.close()
            for s, h in old.items():
                signal.signal(s, h)
        if stopped and self.is_main:
            print(f"stopped at step {self.step}; run the same command to resume", file=sys.stderr)
        return self.step

    def _log(self, acc: dict, t0: float, epoch: int, log, bar) -> None:
        keys = sorted(k for k in acc if k not in ("n", "tokens", "clips", "seconds", "lr", "grad_norm"))
        n = acc["n"]
        # losses averaged over processes and steps; tokens and clips summed over processes
        vals = self._reduce([acc[k] / n for k in keys] + [acc["tokens"], acc["clips"]])
        wall = time.perf_counter() - t0
        rec = {"step": self.step, "epoch": epoch, **{k: v / self.world for k, v in zip(keys, vals)},
               "lr": acc["lr"] / n, "grad_norm": acc["grad_norm"] / n,
               "tokens_per_s": vals[-2] / max(wall, 1e-9), "clips_per_s": vals[-1] / max(wall, 1e-9),
               "clips_per_s_per_process": vals[-1] / self.world / max(wall, 1e-9), "time": time.time()}
        if self.cfg.algo == "grpo":
            rec["temperature"] = self.temperature()
        if self.is_main:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix_str(f"loss {rec['loss']:.4f} lr {rec['lr']:.2e} |g| {rec['grad_norm']:.3f} "
                                f"{rec['clips_per_s']:.1f} clips/s {rec['tokens_per_s']:,.0f} tok/s", refresh=False)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _truncate_log(path: str, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run starts from)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", 0) <= step:
                keep.append(ln)
        except json.JSONDecodeError:
            pass
    if len(keep) != len(lines):
        write_atomic(path, lambda p: open(p, "w", encoding="utf-8").writelines(keep))


def _json_safe(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            pass  # the schedule's lambda: rebuilt from the settings
    return out


def train(cfg: TrainConfig, until: int | None = None) -> int:
    """Build a :class:`Trainer` from ``cfg`` and train (resuming when ``cfg.out`` holds a training state)."""
    return Trainer(cfg).train(until)
