"""A short fast-path decode for compute-sanitizer (memcheck): every compiled decoder op runs (decode steps at
B=2 through the persistent decoder_layers kernel), eagerly and as CUDA graphs, plus fused_linear on the row
counts of its other tiles. Usage: compute-sanitizer --tool memcheck python3 benchmarks/sanitize_fast.py"""
import torch

import autogaze_ext as ag
from autogaze_ext.model.fast import FastGazeRunner, _slot_budget
from autogaze_ext.ops.decoder import DecoderOps

torch.manual_seed(0)
m = ag.AutoGaze().cuda()
with torch.no_grad():
    m.gazing_model.gaze_decoder.task_loss_prediction_head.weight.normal_(0, 0.3)
video = torch.randn(2, 2, 3, 224, 224, device="cuda")
print("custom ops:", DecoderOps.available(torch.device("cuda")))
with torch.no_grad():
    vision, _ = m.gazing_model.embed_video(video)
    for graphs in (False, True):
        r = FastGazeRunner(m.gazing_model.gaze_decoder, 2, 2, 196, _slot_budget([25, 12], 196, 10), use_graphs=graphs)
        ids, counts = r.decode(vision, [25, 12], torch.full((2, 2), 0.02, device="cuda"))
        torch.cuda.synchronize()
        print("graphs" if graphs else "eager", counts.tolist(), ids.shape)

# fused_linear's tiles that a batch-2 decode may not reach (the k-split tiles with 4 and 2 warp groups, the
# small tile), with every prologue and epilogue
with torch.no_grad():
    for M, K, N, swiglu in [(206, 192, 576, False), (206, 192, 768, True), (412, 192, 576, False), (37, 384, 576, True),
                            (37, 192, 192, False)]:
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        res = torch.randn(M, N // 2 if swiglu else N, device="cuda")
        torch.ops.autogaze_ext.fused_linear(x, w, torch.ones(K, device="cuda"), 1e-5, res, swiglu)
    torch.cuda.synchronize()
    print("fused_linear tiles done")
