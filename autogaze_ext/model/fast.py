"""Fast gaze decoding: static shapes, device-resident state, CUDA graphs.

Same decisions as the reference loop in ``generation.py`` (spec §5), rearranged so that no
shape and no control-flow value depends on the data:

* one pre-allocated KV cache for the whole clip, (layers, B, H, L_max, d); every write goes to a
  slot index held on the device;
* a frame's prefill always feeds 10 + 196 slots: the pending last chunk of the previous frame
  (its unused tail slots are holes that stay masked forever) and the vision tokens;
* a decode step selects the next chunk on the device (ban mask, per-head argmax with the in-chunk
  ban, cap, task-loss stop with the first-token exemption, finished rows) and feeds it back; once
  every row of the frame is done a step changes nothing, so steps can run in groups and the
  host only checks a flag between groups (never when no requirement is set: then the step count
  is known in advance); the frame's last possible step only chooses (every row has hit the cap
  then, and its chunk is fed with the next frame's prefill);
* on CUDA, prefill, step, choose and frame end are captured once as CUDA graphs and replayed.

Attention lets every query see its own slot, so hole slots (never read by real tokens) stay
finite. Greedy decoding only; sampling runs on the reference path.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..ops.decoder import DecoderOps, chain_layers
from ..ops.linear import fused_linear_reference
from .decoder import GazeDecoder, apply_rope, rope_cos_sin

_NEG_INF = float("-inf")


def _slot_budget(caps: list[int], n_vision: int, K: int) -> int:
    """Cache slots a clip can use: per frame the 10+196 prefill slots plus every fed chunk."""
    return sum(K + n_vision + K * (max(1, math.ceil(c / K)) - 1) for c in caps)


class FastGazeRunner:
    """Decodes clips of a fixed batch size and slot budget; reusable across calls."""

    def __init__(self, decoder: GazeDecoder, batch: int, n_frames: int, n_vision: int, max_slots: int,
                 use_graphs: bool | None = None, use_ops: bool | None = None, tf32: bool = False):
        cfg = decoder.cfg
        p = next(decoder.parameters())
        dev, dt = p.device, p.dtype
        self.dec, self.B, self.T = decoder, batch, n_frames
        self.K, self.eos, self.vocab = cfg.num_multi_token_pred, cfg.eos_token_id, cfg.vocab_size
        self.H, self.d, self.D = cfg.num_heads, cfg.head_dim, cfg.hidden_size
        self.kvh = cfg.num_kv_heads
        self.P = self.K + n_vision  # prefill slots
        self.max_ids = cfg.vocab_size - 1 + self.K  # a frame never exceeds V ids (+ one chunk of slack)
        # slack: frame-end windows never run off the end; a multiple of 256 for the split-K p @ v
        self.L = 256 * math.ceil((max_slots + self.max_ids) / 256)
        B, L, K = batch, self.L, self.K
        layers = cfg.num_layers
        # per-layer weights stacked as decoder_layers takes them; q|k|v and gate|up fused (fewer, larger GEMMs)
        layers_ = decoder.model.layers
        self.stacked = dict(
            w_qkv=torch.stack([torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight,
                                          l.self_attn.v_proj.weight]) for l in layers_]),
            w_o=torch.stack([l.self_attn.o_proj.weight for l in layers_]),
            w_gu=torch.stack([torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight]) for l in layers_]),
            w_down=torch.stack([l.mlp.down_proj.weight for l in layers_]),
            norm_attn=torch.stack([l.input_layernorm.weight for l in layers_]),
            norm_mlp=torch.stack([l.post_attention_layernorm.weight for l in layers_]))
        self.norm_eps = layers_[0].input_layernorm.eps
        self.w_heads = torch.cat([decoder.lm_head.weight, decoder.task_loss_prediction_head.weight])
        # the compiled decoder ops when built for this device (use_ops=None), else their references; the trunk
        # and heads then run the compiled ops or plain PyTorch modules
        self.ops = DecoderOps.choose(dev, use_ops)
        self.use_ops = self.ops.compiled
        self._forward = self._forward_ops if self.use_ops else self._forward_torch
        self._heads = self._heads_ops if self.use_ops else self._heads_torch
        # precision="tf32": the big-batch prefills' attention on TF32 tensor cores (their cuBLAS projections
        # follow torch's TF32 flag, set by the caller)
        self.tf32 = bool(tf32)

        z = lambda *s, **k: torch.zeros(*s, device=dev, **k)  # noqa: E731
        self.kc = z(layers, B, self.kvh, L, self.d, dtype=dt)
        self.vc = z(layers, B, self.kvh, L, self.d, dtype=dt)
        self.kvalid = z(B, L, dtype=torch.bool)
        self.slot_idx = torch.arange(L, device=dev)
        self.seq = z(1, dtype=torch.long)  # next free cache slot (shared by the batch)
        self.count = z(B, dtype=torch.long)  # valid tokens so far per row (next position)
        self.pend = torch.full((B, K), self.eos, device=dev, dtype=torch.long)
        self.pend_len = z(1, dtype=torch.long)
        self.vision = z(B, n_frames, n_vision, self.D, dtype=dt)
        self.t = z(1, dtype=torch.long)
        self.caps = torch.ones(n_frames, device=dev, dtype=torch.long)
        self.reqs = z(B, n_frames, dtype=torch.float32)
        self.has_req = z(1, dtype=torch.bool)
        # per-frame decode state
        self.fids = torch.full((B, self.max_ids + K), self.eos, device=dev, dtype=torch.long)
        self.n = z(1, dtype=torch.long)
        self.cap = z(1, dtype=torch.long)
        self.req = z(B, dtype=torch.float32)
        self.banned = z(B, self.vocab, dtype=torch.bool)
        self.unfinished = z(B, dtype=torch.bool)
        self.first = z(1, dtype=torch.bool)
        self.active = z(1, dtype=torch.bool)
        self.frame_start = z(1, dtype=torch.long)
        self.tail_pos = z(B, K, dtype=torch.long)
        self.h = z(B, self.D, dtype=dt)
        # clip outputs
        self.out_ids = torch.full((B, n_frames, self.max_ids + K), self.eos, device=dev, dtype=torch.long)
        self.out_n = z(n_frames, dtype=torch.long)
        self.karange = torch.arange(K, device=dev)

        self._side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        if use_graphs is None:
            use_graphs = dev.type == "cuda"
        self.graphs = None
        if use_graphs:
            self._capture()

    # ------------------------------------------------------------------ decoder trunk
    # Rows above which cuBLAS beats the fused SIMT kernel (measured on an H100: M=52000, K=192, N=576
    # takes 928 µs fused vs ~360 µs for F.linear plus the separate norm); decode steps stay fused.
    FUSED_LINEAR_MAX_ROWS = 2048

    def _linear(self, x, weight, norm_weight, eps, residual, swiglu):
        """fused_linear's signature: the fused op for few rows, cuBLAS for many, with PyTorch's one-kernel
        RMSNorm in front (at 13184 rows on an H100 the qkv projection takes 137 µs, against 199 µs with the
        norm as fused_linear_reference writes it, five elementwise kernels)."""
        if x.shape[0] <= self.FUSED_LINEAR_MAX_ROWS:
            return self.ops.fused_linear(x, weight, norm_weight, eps, residual, swiglu)
        if norm_weight is not None:
            x = F.rms_norm(x, (x.shape[-1],), norm_weight, eps)
        return fused_linear_reference(x, weight, None, eps, residual, swiglu)

    # Rows up to which one decoder_layers call runs all layers (on CUDA one persistent kernel for decode
    # steps at small batch, the chained ops otherwise); above it the layers chain the ops here so that
    # big projections can go to cuBLAS. 0 disables decoder_layers (benchmarks compare both).
    LAYERS_OP_MAX_ROWS = 2048
    # Only the last token's hidden state is read, so the last layer's attention and MLP run for it alone
    # (decoder_layers' last_only); False runs them for every token, for A/B timing.
    LAST_TOKEN_ONLY = True

    # _forward(x, positions, start), one of the two below: feed x (B, n, D) into slots start..start+n (validity
    # already written); -> the last token's hidden state before the final norm (B, D).
    def _forward_ops(self, x, positions, start):
        ops = self.ops
        B, n, _ = x.shape
        st = self.stacked
        args = (x.contiguous(), positions.contiguous(), self.dec.inv_freq, self.kc, self.vc, self.kvalid, start,
                st["w_qkv"], st["w_o"], st["w_gu"], st["w_down"], st["norm_attn"], st["norm_mlp"], self.norm_eps,
                self.H, self.kvh)
        last = self.LAST_TOKEN_ONLY
        if B * n <= self.LAYERS_OP_MAX_ROWS:
            h = ops.decoder_layers(*args, last)
        else:
            h = chain_layers(*args, last, linear=self._linear, rope=ops.rope_cache_write,
                             attention=functools.partial(ops.cache_attention, tf32=self.tf32))
        return h[:, -1]

    # _heads(h), one of the two below: final norm + multi-token head + loss head: (B, D) -> logits (B, K, vocab),
    # losses (B, K).
    def _heads_ops(self, h: torch.Tensor):
        B = h.shape[0]
        norm = self.dec.model.norm
        out = self.ops.fused_linear(h.contiguous(), self.w_heads, norm.weight, norm.eps, None, False)
        split = self.K * self.vocab
        return out[:, :split].view(B, self.K, self.vocab), out[:, split:]

    def _heads_torch(self, h: torch.Tensor):
        return self.dec.heads(self.dec.model.norm(h))

    def _forward_torch(self, x, positions, start):
        B, n, _ = x.shape
        slots = start + torch.arange(n, device=x.device)
        allowed = self.kvalid[:, None, None, :] & (self.slot_idx[None, None, None, :] <= slots[None, None, :, None])
        allowed = allowed | (self.slot_idx[None, None, None, :] == slots[None, None, :, None])
        cos, sin = rope_cos_sin(self.dec.inv_freq, positions, x.dtype)
        H, kvh, d = self.H, self.kvh, self.d
        for i, layer in enumerate(self.dec.model.layers):
            a = layer.self_attn
            hn = layer.input_layernorm(x)
            q, k, v = F.linear(hn, self.stacked["w_qkv"][i]).split([H * d, kvh * d, kvh * d], dim=-1)
            q = apply_rope(q.view(B, n, H, d).transpose(1, 2), cos, sin)
            k = apply_rope(k.view(B, n, kvh, d).transpose(1, 2), cos, sin)
            self.kc[i].index_copy_(2, slots, k)
            self.vc[i].index_copy_(2, slots, v.view(B, n, kvh, d).transpose(1, 2))
            kk, vv = self.kc[i], self.vc[i]
            if kvh != H:
                kk, vv = kk.repeat_interleave(H // kvh, 1), vv.repeat_interleave(H // kvh, 1)
            o = self._attend(q, kk, vv, allowed)
            x = x + a.o_proj(o.transpose(1, 2).reshape(B, n, H * d))
            hn = layer.post_attention_layernorm(x)
            g, u = F.linear(hn, self.stacked["w_gu"][i]).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(F.silu(g) * u)
        return x[:, -1]

    @staticmethod
    def _attend(q, k, v, allowed, rows_per_chunk: int = 32) -> torch.Tensor:
        """Softmax attention over the whole static cache as batched GEMMs (fp32, exact mode).

        Fused attention kernels parallelise over queries, and a step has only 10: they would run
        a handful of thread blocks over thousands of keys. GEMMs split the key axis instead.
        Rows are processed in chunks to bound the (rows, H, n, L) score tensor.
        """
        scale = 1.0 / math.sqrt(q.shape[-1])
        outs = []
        for r in range(0, q.shape[0], rows_per_chunk):
            sl = slice(r, r + rows_per_chunk)
            s = torch.matmul(q[sl], k[sl].transpose(-1, -2)) * scale
            s = s.masked_fill(~allowed[sl], _NEG_INF)
            p = torch.softmax(s, dim=-1)
            # p @ v reduces over thousands of keys into a few outputs: split the key axis into
            # blocks, multiply per block, then sum (a split-K GEMM the library does not pick)
            R, H, n, L = p.shape
            blk = 256 if L % 256 == 0 else L
            pv = torch.matmul(p.view(R, H, n, L // blk, blk).transpose(2, 3),
                              v[sl].view(R, H, L // blk, blk, v.shape[-1]))
            outs.append(pv.sum(dim=2))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    # ------------------------------------------------------------------ phases
    def prefill(self) -> None:
        """Feed the pending chunk (holes masked) and frame t's vision tokens; start frame t."""
        self._fork(self._reset_frame_state)  # touches nothing the layers read
        # tail_pos: the stale positions of every in-frame step (spec §5.6)
        x, positions = self.ops.frame_begin(self.pend, self.pend_len, self.vision, self.t,
                                            self.dec.model.embed_tokens.weight, self.seq, self.kvalid, self.count,
                                            self.tail_pos, self.eos)
        self.h.copy_(self._forward(x, positions, self.seq))
        self.seq.add_(self.P)
        self.frame_start.copy_(self.seq)
        self._join()

    def _fork(self, fn) -> None:
        """fn on the side stream after the work queued so far, so that in a captured graph it is a parallel
        branch instead of more dependent kernels (inline without a side stream); _join() waits for it. fn
        works in place only (no allocation on the side stream)."""
        if self._side is None:
            fn()
            return
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            fn()

    def _join(self) -> None:
        if self._side is not None:
            torch.cuda.current_stream().wait_stream(self._side)

    def _reset_frame_state(self) -> None:
        """The per-frame decode state for frame t (run by _fork: in place only)."""
        self.n.zero_()
        torch.index_select(self.caps, 0, self.t, out=self.cap)
        torch.index_select(self.reqs, 1, self.t, out=self.req.view(-1, 1))
        self.banned.zero_()
        self.banned.select(1, self.eos).fill_(True)
        self.unfinished.fill_(True)
        self.first.fill_(True)
        self.active.fill_(True)
        self.fids.fill_(self.eos)

    def step(self) -> None:
        """Choose the next chunk for every row, then feed it back; a no-op once the frame is done."""
        self._feed(self.choose(), self.active)  # select leaves active = (still active) and any row unfinished

    def choose(self) -> torch.Tensor:
        """Choose the next chunk for every row without feeding it back; -> chunk (B, K).

        The frame's last possible step (number ceil(cap/K)) runs this alone: that many chunks reach the cap,
        so afterwards no row is unfinished and step() would feed nothing (its layers would run for results
        that are discarded). The chunk is fed with the next frame's prefill."""
        logits, loss_pred = self._heads(self.h)
        return self.ops.select_step(logits.contiguous(), loss_pred.contiguous(), self.cap, self.req, self.has_req,
                                    self.banned, self.unfinished, self.fids, self.n, self.first, self.active)

    def _feed(self, chunk: torch.Tensor, feed: torch.Tensor) -> None:
        """Feed the chunk back with the frame's stale positions (every fed slot is visible inside
        the frame); when ``feed`` is false nothing observable changes."""
        B, K = self.B, self.K
        self.kvalid.index_copy_(1, self.seq + self.karange, feed.expand(B, K))
        # a gather by advanced indexing: for 10 ids the embedding module's index_select kernel took 5.8-6.9 us
        # on an H100, the gather kernel this launches 1.5-1.6 us (kernel trace of the step graph)
        h = self._forward(self.dec.model.embed_tokens.weight[chunk], self.tail_pos, self.seq)
        torch.where(feed, h, self.h, out=self.h)  # elementwise: writing over an input is safe
        self.seq.add_(feed.long(), alpha=K)

    def end_frame(self) -> None:
        """Mask the frame's fed pads for later frames, keep its last chunk pending, store ids (frame_end)."""
        self.ops.frame_end(self.fids, self.n, self.frame_start, self.t, self.kvalid, self.count, self.pend,
                           self.pend_len, self.out_ids, self.out_n, self.eos)
        self.t.add_(1)

    def reset(self) -> None:
        self.kvalid.zero_()
        self.seq.zero_()
        self.count.zero_()
        self.pend.fill_(self.eos)
        self.pend_len.zero_()
        self.t.zero_()
        self.out_n.zero_()

    # ------------------------------------------------------------------ graphs
    def _capture(self) -> None:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up outside the graph (cuBLAS handles, workspaces)
            self.reset()
            self.prefill()
            self.step()
            self.choose()
            self.end_frame()
            self.reset()
        torch.cuda.current_stream().wait_stream(s)
        self.graphs = {}
        pool = None
        for name in ("prefill", "step", "choose", "end_frame"):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                getattr(self, name)()
            pool = g.pool()
            self.graphs[name] = g
        self.reset()

    def _run(self, name: str) -> None:
        if self.graphs is None:
            getattr(self, name)()
        else:
            self.graphs[name].replay()

    # ------------------------------------------------------------------ driver
    def _decode_frame(self, cap: int, has_req: bool) -> None:
        """One frame: prefill, the steps (the last one only chooses), end. With a requirement the steps run in
        doubling groups with one host check of the frame's flag between groups; without one, in a single group
        (the step count is known)."""
        self._run("prefill")
        max_steps = max(1, math.ceil(cap / self.K))
        done, group = 0, 1 if has_req else max_steps
        while done < max_steps:
            for i in range(done, min(done + group, max_steps)):
                self._run("step" if i + 1 < max_steps else "choose")
            done += group
            if done < max_steps and not bool(self.active):  # no check after the last group
                break
            group *= 2
        self._run("end_frame")

    def decode(self, vision: torch.Tensor, caps: list[int], reqs: torch.Tensor | None):
        """vision (B, T, NV, D); caps per frame; reqs (B, T) or None.
        Returns (ids (B, N) local ids with EOS pads, counts (T,))."""
        T = vision.shape[1]
        if T > self.T or vision.shape[0] != self.B:
            raise ValueError(f"vision: runner holds {self.B} rows x {self.T} frames, got {tuple(vision.shape[:2])}")
        self.reset()
        self.vision[:, :T].copy_(vision)
        self.caps[:T].copy_(torch.tensor(caps, dtype=torch.long))
        self.has_req.fill_(reqs is not None)
        if reqs is not None:
            self.reqs[:, :T].copy_(reqs)
        for t in range(T):
            self._decode_frame(caps[t], reqs is not None)
        counts = self.out_n[:T].clone()
        n_list = counts.tolist()
        ids = torch.cat([self.out_ids[:, t, :n] for t, n in enumerate(n_list)], dim=1)
        return ids, counts
