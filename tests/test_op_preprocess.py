"""preprocess vs the AutoGaze processor (Pillow) and the model's bicubic resize (spec §2)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autogaze_ext.ops import _common as common
from autogaze_ext.ops.preprocess import preprocess, preprocess_reference
from autogaze_ext.processor import AutoGazeImageProcessor
from conftest import capture_graph, case_input, data_dir, fixture_dir, on_side_stream, run_case, poison_cuda_cache

op = torch.ops.autogaze_ext.preprocess if common.HAS_EXTENSION else None
needs_ext = pytest.mark.skipif(not common.HAS_EXTENSION, reason="compiled extension missing")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# (H, W, size): 2x reduction (the fixture), 1080p and 4K to 224 x 398, odd reductions, upscaling, only one
# axis resized, unchanged, tiny, and a fixed processor size.
SIZES = [(448, 448, None), (1080, 1920, None), (301, 225, None), (100, 150, None), (224, 300, None),
         (300, 224, None), (224, 224, None), (5, 7, None), (720, 1280, (392, 392)), (333, 517, (200, 100))]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def random_frames(seed, shape, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.rand(shape, generator=g) * 255


def processor_for(size):
    return AutoGazeImageProcessor() if size is None else AutoGazeImageProcessor.from_pretrained(None, size=size)


@needs_ext
@pytest.mark.parametrize("H,W,size", SIZES)
def test_uint8_bit_exact(H, W, size):
    frames = random_frames(H * W, (2, 3, H, W, 3))
    proc = processor_for(size)
    processed, model_input = preprocess(frames, proc)
    ref, ref_model = preprocess_reference(frames, proc)
    assert processed.shape == ref.shape and torch.equal(processed, ref)
    assert model_input.shape == (2, 3, 3, 224, 224)
    assert rel_err(model_input, ref_model) <= 1e-6
    if ref.shape[-2:] == (224, 224):
        assert model_input is processed


@needs_ext
def test_uint8_natural_image_and_constant_frames():
    # smooth content (most pixels far from rounding edges is not what catches fixed-point slips: use both)
    y, x = torch.meshgrid(torch.linspace(0, 1, 1080), torch.linspace(0, 1, 1920), indexing="ij")
    img = torch.stack([255 * x, 255 * y, 127 + 120 * torch.sin(20 * x * y)], -1).round().to(torch.uint8)
    frames = torch.stack([img, torch.full_like(img, 255), torch.zeros_like(img), torch.full_like(img, 1)])
    processed, _ = preprocess(frames)
    assert torch.equal(processed, preprocess_reference(frames)[0])


@needs_ext
@pytest.mark.parametrize("H,W,size", [(448, 448, None), (301, 225, None), (100, 150, None), (224, 300, None)])
def test_float_frames_follow_pillow_float_mode(H, W, size):
    from PIL import Image

    frames = random_frames(7, (1, 2, H, W, 3), torch.float32)
    processed, model_input = preprocess(frames, processor_for(size))
    oh, ow = processed.shape[-2:]
    resized = np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f[..., c])).resize((ow, oh), Image.BILINEAR))
                                  for c in range(3)]) for f in frames[0].numpy()])
    y = (torch.from_numpy(resized).double() * (1 / 127.5)).float() - 1
    y = (y - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.equal(processed[0], y)
    # uint8-valued float frames resize like the uint8 path, minus its intermediate rounding
    as_float, _ = preprocess(frames.round().clamp(0, 255).to(torch.uint8).float())
    exact, _ = preprocess(frames.round().clamp(0, 255).to(torch.uint8))
    assert (as_float - exact).abs().max() < 0.05


@needs_ext
def test_processor_options():
    frames = random_frames(3, (1, 2, 120, 90, 3))
    for cfg in [dict(do_normalize=False), dict(do_rescale=False, offset=False), dict(offset=False),
                dict(do_resize=False), dict(size={"shortest_edge": 64}), dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)]:
        proc = AutoGazeImageProcessor(**cfg)
        got, model_input = preprocess(frames, cfg, model_size=None)
        assert torch.equal(got, proc(frames)) and model_input is got, cfg
        assert torch.equal(preprocess(frames, proc, model_size=0)[0], got)
    got, model_input = preprocess(frames[0], model_size=48)  # (T, H, W, 3) input
    ref = F.interpolate(AutoGazeImageProcessor()(frames)[0], size=(48, 48), mode="bicubic", align_corners=False)
    assert model_input.shape == (1, 2, 3, 48, 48) and rel_err(model_input[0], ref) <= 1e-6


def _raw_fixture_frames(d):
    from PIL import Image

    files = sorted((d / "raw").glob("frame_*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])


@needs_ext
def test_fixture_inputs_bit_exact():
    """inputs/video_224 and inputs/video_392 are the official processor's outputs of the raw PNG frames."""
    d = fixture_dir()
    if d is None:
        pytest.skip("official fixtures not found")
    from safetensors.torch import load_file

    fx = load_file(str(d / "cases.safetensors"))
    raw = _raw_fixture_frames(d)
    processed, model_input = preprocess(raw)
    assert torch.equal(processed, fx["inputs/video_224"]) and model_input is processed
    processed, _ = preprocess(raw[:2], AutoGazeImageProcessor.from_pretrained(d / "model", size=(392, 392)))
    assert torch.equal(processed, fx["inputs/video_392"])


@needs_ext
@pytest.mark.parametrize("name", ["case1", "case2", "case6"])
def test_fixture_gaze_ids_unchanged(official, official_model, name):
    """Gazing on preprocess(raw frames) gives the official ids (the inputs are bit-identical, so this is
    the end-to-end statement of it)."""
    d, fx, meta = official
    raw = _raw_fixture_frames(d)
    pre = dict(fx)
    pre["inputs/video_224"] = preprocess(raw)[0]
    pre["inputs/video_392"] = preprocess(raw[:2], AutoGazeImageProcessor.from_pretrained(d / "model",
                                                                                         size=(392, 392)))[0]
    case = next(c for c in meta["cases"] if c["name"] == name)
    ids, pads, counts, _ = run_case(official_model, case_input(pre, case), case)
    assert torch.equal(counts, fx[f"{name}/num_gazing_each_frame"])
    assert torch.equal(pads, fx[f"{name}/if_padded_gazing"].bool())
    assert torch.equal(ids[~pads], fx[f"{name}/gazing_pos"][~pads])


@needs_ext
def test_example_video_bit_exact():
    d = data_dir()
    if d is None or not (d / "example_input.mp4").is_file():
        pytest.skip("example_input.mp4 not found")
    av = pytest.importorskip("av")
    with av.open(str(d / "example_input.mp4")) as c:
        frames = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)])
    processed, _ = preprocess(frames)
    assert processed.shape == (1, 64, 3, 224, 224)
    assert torch.equal(processed, AutoGazeImageProcessor()(frames))


def test_fallback_without_extension(monkeypatch):
    frames = random_frames(4, (1, 2, 90, 120, 3))
    expected = preprocess(frames)
    monkeypatch.setattr(common, "HAS_EXTENSION", False)
    got = preprocess(frames)
    assert torch.equal(got[0], expected[0]) and rel_err(got[1], expected[1]) <= 1e-6


@pytest.mark.parametrize("args,kwargs,exc,match", [
    (([[0]],), {}, TypeError, "frames must be a torch.Tensor"),
    ((torch.zeros(2, 8, 8, 3, dtype=torch.int32),), {}, TypeError, "frames must be uint8"),
    ((torch.zeros(2, 8, 8, 4, dtype=torch.uint8),), {}, ValueError, "frames must be"),
    ((torch.zeros(8, 8, 3, dtype=torch.uint8),), {}, ValueError, "frames must be"),
    ((torch.zeros(1, 0, 8, 3, dtype=torch.uint8),), {}, ValueError, "frames has an empty"),
    ((torch.zeros(1, 8, 8, 3, dtype=torch.uint8),), {"model_size": -1}, ValueError, "model_size must be >= 0"),
    ((torch.zeros(1, 8, 8, 3, dtype=torch.uint8),), {"model_size": 2.0}, TypeError, "model_size must be an int"),
    ((torch.zeros(1, 8, 8, 3, dtype=torch.uint8),), {"processor": "autogaze"}, TypeError, "processor must be"),
    ((torch.zeros(1, 8, 8, 3, dtype=torch.uint8),), {"processor": {"image_std": [0.0, 1.0, 1.0]}}, ValueError,
     "image_std"),
    ((torch.zeros(1, 8, 8, 3, dtype=torch.uint8),), {"processor": {"resample": 3}}, ValueError, "resample"),
])
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        preprocess(*args, **kwargs)


@needs_ext
def test_op_checks_its_own_arguments():
    f = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    for args, match in [((f[..., :2], 4, 4, 0, 1.0, False, MEAN, STD), "frames"),
                        ((f.int(), 4, 4, 0, 1.0, False, MEAN, STD), "uint8"),
                        ((f, 0, 4, 0, 1.0, False, MEAN, STD), "out_h"),
                        ((f, 4, 4, -1, 1.0, False, MEAN, STD), "model_size"),
                        ((f, 4, 4, 0, 1.0, False, MEAN[:2], STD), "mean"),
                        ((f, 4, 4, 0, 1.0, False, MEAN, [1.0, 0.0, 1.0]), "std")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


@needs_ext
def test_opcheck_fake_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    f = random_frames(5, (3, 40, 60, 3))
    torch.library.opcheck(op, (f, 20, 30, 16, 1 / 127.5, True, MEAN, STD))
    torch.library.opcheck(op, (f.float(), 20, 30, 0, 1 / 127.5, True, MEAN, STD))
    with FakeTensorMode() as mode:
        p, m = op(mode.from_tensor(f), 20, 30, 16, 1 / 127.5, True, MEAN, STD)
    assert p.shape == (3, 3, 20, 30) and m.shape == (3, 3, 16, 16) and p.dtype == torch.float32
    fn = torch.compile(lambda x: preprocess(x), backend="aot_eager", fullgraph=True)
    got = fn(f)
    ref = preprocess(f)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# ------------------------------------------------------------------------------------------------- CUDA




@pytest.mark.cuda
@cuda
@needs_ext
@pytest.mark.parametrize("H,W,size", SIZES + [(2160, 3840, None)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_matches_cpu(H, W, size, dtype):
    assert common.HAS_CUDA_KERNELS, "built without CUDA kernels; the CUDA path would be the reference"
    frames = random_frames(H + W, (1, 2, H, W, 3), dtype)
    proc = processor_for(size)
    poison_cuda_cache()
    got, got_model = preprocess(frames.cuda(), proc)
    cpu, cpu_model = preprocess(frames, proc)
    assert got.is_cuda and torch.equal(got.cpu(), cpu)  # integer taps and unfused double: bit-exact
    assert rel_err(got_model.cpu(), cpu_model) <= 1e-6
    if dtype == torch.uint8:
        assert torch.equal(got.cpu(), preprocess_reference(frames, proc)[0])


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_stream_and_graph():
    assert common.HAS_CUDA_KERNELS
    frames = random_frames(0, (16, 448, 448, 3)).cuda()
    ref = op(frames.cpu(), 224, 224, 160, 1 / 127.5, True, MEAN, STD)
    got = on_side_stream(lambda: op(frames, 224, 224, 160, 1 / 127.5, True, MEAN, STD))
    assert torch.equal(got[0].cpu(), ref[0]) and rel_err(got[1].cpu(), ref[1]) <= 1e-6

    static = frames.clone()
    graph, (processed, model_input) = capture_graph(lambda: op(static, 224, 224, 160, 1 / 127.5, True, MEAN, STD))
    new = random_frames(1, (16, 448, 448, 3))
    static.copy_(new.cuda())
    poison_cuda_cache()
    graph.replay()
    torch.cuda.synchronize()
    ref = op(new, 224, 224, 160, 1 / 127.5, True, MEAN, STD)
    assert torch.equal(processed.cpu(), ref[0]) and rel_err(model_input.cpu(), ref[1]) <= 1e-6


@pytest.mark.cuda
@cuda
@needs_ext
def test_cuda_processor_uses_the_op():
    assert common.HAS_CUDA_KERNELS
    frames = random_frames(9, (1, 4, 1080, 1920, 3))
    proc = AutoGazeImageProcessor()
    on_gpu = proc(frames, device="cuda")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), proc(frames))
    assert torch.equal(proc(frames.cuda()).cpu(), proc(frames))
