"""A short fast-path decode for compute-sanitizer (memcheck): every compiled decoder op runs (decode steps at
B=2 through the persistent decoder_layers kernel),
eagerly and as CUDA graphs. Usage: compute-sanitizer --tool memcheck python3 benchmarks/sanitize_fast.py"""
import torch

import autogaze_ext as ag
from autogaze_ext.model.fast import FastGazeRunner, _slot_budget, custom_ops_available

torch.manual_seed(0)
m = ag.AutoGaze().cuda()
with torch.no_grad():
    m.gazing_model.gaze_decoder.task_loss_prediction_head.weight.normal_(0, 0.3)
video = torch.randn(2, 2, 3, 224, 224, device="cuda")
print("custom ops:", custom_ops_available(torch.device("cuda")))
with torch.no_grad():
    vision, _ = m.gazing_model.embed_video(video)
    for graphs in (False, True):
        r = FastGazeRunner(m.gazing_model.gaze_decoder, 2, 2, 196, _slot_budget([25, 12], 196, 10), use_graphs=graphs)
        ids, counts = r.decode(vision, [25, 12], torch.full((2, 2), 0.02, device="cuda"))
        torch.cuda.synchronize()
        print("graphs" if graphs else "eager", counts.tolist(), ids.shape)
