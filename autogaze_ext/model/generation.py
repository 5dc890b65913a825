"""Reference autoregressive gaze decoding (spec §5), readable PyTorch.

This is the oracle every fast path must match token for token. It follows the official
decoding exactly, quirks included:

* one decoder pass per step yields K (=10) token distributions and K predicted losses;
* per row, ids already chosen in the current frame and the EOS id are banned; heads pick in
  order and each pick is banned for the later heads of the same chunk (§5.4);
* a chunk stops early once the frame reaches its cap, or when every row of head k is banned;
* rows that finished get EOS pads; with a task-loss requirement, head k's token becomes a pad
  where its predicted loss is <= the requirement (never head 0 of a frame's first step), and
  any such pad finishes the row; reaching the cap finishes every row (§5.4–5.5);
* tokens fed back inside a frame reuse the last K positions of the frame's prefill (§5.6);
  inside its frame a fed pad is a visible key, in later frames it is masked.

``cached=False`` recomputes the whole sequence at every step with the same positions and masks,
which must give the same ids as the KV-cached path.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .decoder import GazeDecoder, KVCache


@dataclass
class Sampler:
    """Greedy (``do_sample=False``) or the official training sampler: temperature, then
    top-k over each head's distribution, then multinomial sampling."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    generator: torch.Generator | None = None
    # optional decision-margin record for tie-aware comparisons: one float per frame, the
    # smallest top-1/top-2 logit gap or |predicted loss - requirement| seen in that frame
    trace: list | None = None

    def note(self, margin: torch.Tensor) -> None:
        if self.trace is not None and margin.numel():
            self.trace[-1] = min(self.trace[-1], float(margin.min()))

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return scores
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        return scores

    def pick(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, V) -> chosen ids (B,)."""
        if not self.do_sample:
            if self.trace is not None:
                top2 = torch.topk(scores, 2, dim=-1).values
                gap = top2[:, 0] - top2[:, 1]
                self.note(gap[torch.isfinite(gap)])
            return torch.argmax(scores, dim=-1)
        dead = torch.isneginf(scores).all(dim=-1)
        safe = torch.where(dead[:, None], torch.zeros_like(scores), scores)
        probs = torch.softmax(safe.float(), dim=-1)
        # multinomial on the CPU generator when one is given, so seeds reproduce across devices
        if self.generator is not None and self.generator.device != probs.device:
            ids = torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(1).to(probs.device)
        else:
            ids = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        return torch.where(dead, torch.argmax(scores, dim=-1), ids)


def select_chunk(logits, loss_pred, frame_ids, cap, unfinished, requirement, first_step, eos, sampler):
    """One decode step's token choice for every row (spec §5.4).

    logits (B, K, V) float32; loss_pred (B, K); frame_ids (B, n) ids already emitted in this
    frame (pads included); cap: this frame's slot budget; unfinished (B,) bool;
    requirement (B,) float or None. Returns (chunk (B, k'), unfinished (B,)).
    """
    B, K, V = logits.shape
    n = frame_ids.shape[1]
    rows = torch.arange(B, device=logits.device)
    scores = logits.clone()
    if n:
        scores[rows[:, None], :, frame_ids] = float("-inf")  # no repeats inside the frame
    scores[..., eos] = float("-inf")  # never choose EOS
    scores = sampler.warp(scores)
    picks = []
    early_stopped = False
    for k in range(K):
        if n + len(picks) >= cap:
            early_stopped = True
            break
        s_k = scores[:, k]
        if torch.isneginf(s_k).all():
            early_stopped = True
            break
        tok = sampler.pick(s_k)
        picks.append(tok)
        scores[rows, k + 1:, tok] = float("-inf")  # no duplicates inside the chunk
    chunk = torch.stack(picks, dim=1)
    chunk = torch.where(unfinished[:, None], chunk, torch.full_like(chunk, eos))
    met = torch.zeros_like(chunk, dtype=torch.bool)
    if requirement is not None:
        met = loss_pred[:, : chunk.shape[1]] <= requirement[:, None]
        sampler.note((loss_pred[:, : chunk.shape[1]] - requirement[:, None]).abs()[unfinished])
        if first_step:
            met[:, 0] = False  # every frame keeps at least one real token
        chunk = torch.where(met, torch.full_like(chunk, eos), chunk)
    hit_cap = n + chunk.shape[1] >= cap
    if hit_cap:
        chunk = chunk[:, : cap - n]
    unfinished = unfinished & ~met.any(dim=1) & (not hit_cap) & (not early_stopped)
    return chunk, unfinished


@dataclass
class DecodeState:
    """Everything the decoder needs to continue a clip or a stream at the next frame."""

    key_mask: torch.Tensor  # (B, S) bool: every token so far (fed or pending) that later tokens may see
    pending: torch.Tensor  # (B, P, D) embeddings emitted but not yet fed (last chunk of the last frame)
    cache: KVCache | None  # KV cache of the fed tokens (cached mode)
    fed: list = field(default_factory=list)  # uncached mode: [(embeds, positions)] of fed tokens
    conv_past: list | None = None  # conv-encoder caches, (B, C, 2, h, w) per block
    frames_seen: int = 0

    @classmethod
    def empty(cls, batch: int, dim: int, num_layers: int, cached: bool, like: torch.Tensor) -> "DecodeState":
        return cls(
            key_mask=torch.zeros(batch, 0, dtype=torch.bool, device=like.device),
            pending=like.new_zeros(batch, 0, dim),
            cache=KVCache(num_layers) if cached else None,
        )

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def fork(self) -> "DecodeState":
        """A copy for the next call to advance, so that the state a caller holds never changes (a retry from it
        repeats the call; a call that fails leaves it as it was). Tensors are shared: decoding never writes into
        them, it makes new ones; only the containers it appends to are copied."""
        cache = None
        if self.cache is not None:
            cache = KVCache(len(self.cache.k))
            cache.k, cache.v = list(self.cache.k), list(self.cache.v)
        conv_past = None if self.conv_past is None else list(self.conv_past)
        return replace(self, cache=cache, fed=list(self.fed), conv_past=conv_past)


def _feed(decoder: GazeDecoder, st: DecodeState, x, positions, key_mask) -> torch.Tensor:
    """Feed new tokens; return the final hidden state of the last one (B, D)."""
    if st.cached:
        return decoder(x, positions, key_mask, st.cache)[:, -1]
    st.fed.append((x, positions))
    xs = torch.cat([e for e, _ in st.fed], dim=1)
    ps = torch.cat([p for _, p in st.fed], dim=1)
    return decoder(xs, ps, key_mask)[:, -1]


def decode_frame(decoder: GazeDecoder, st: DecodeState, vision: torch.Tensor, cap: int,
                 requirement: torch.Tensor | None, sampler: Sampler) -> torch.Tensor:
    """Generate one frame's gaze ids (B, n) (local ids, EOS for pads) and advance ``st``."""
    cfg = decoder.cfg
    if sampler.trace is not None:
        sampler.trace.append(float("inf"))
    K, eos = cfg.num_multi_token_pred, cfg.eos_token_id
    B = vision.shape[0]
    seq_mask = torch.cat([st.key_mask, torch.ones(B, vision.shape[1], dtype=torch.bool, device=vision.device)], 1)
    positions = seq_mask.long().cumsum(-1) - 1
    x = torch.cat([st.pending, vision], dim=1)
    h = _feed(decoder, st, x, positions[:, -x.shape[1]:], seq_mask)
    tail_pos = positions[:, -K:]  # stale positions of every in-frame step (spec §5.6)

    frame_ids = torch.zeros(B, 0, dtype=torch.long, device=vision.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=vision.device)
    step_mask = seq_mask
    first = True
    while True:
        logits, loss_pred = decoder.heads(h)
        chunk, unfinished = select_chunk(logits, loss_pred, frame_ids, cap, unfinished, requirement, first, eos, sampler)
        frame_ids = torch.cat([frame_ids, chunk], dim=1)
        first = False
        if not bool(unfinished.any()):
            break
        # a continuing step always follows a full chunk of K tokens
        step_mask = torch.cat([step_mask, torch.ones(B, K, dtype=torch.bool, device=vision.device)], 1)
        h = _feed(decoder, st, decoder.model.embed_tokens(chunk), tail_pos, step_mask)

    n = frame_ids.shape[1]
    n_fed = K * ((n - 1) // K)  # every chunk but the last was fed back inside the frame
    st.key_mask = torch.cat([seq_mask, frame_ids != eos], dim=1)
    st.pending = decoder.model.embed_tokens(frame_ids[:, n_fed:])
    return frame_ids
