"""accelerate(): stock SigLIP / timm ViTs on packed gazed tokens vs the official outputs, the official dense-mask
approach and the stock models themselves."""

import pytest
import torch
import torch.nn.functional as F

import autogaze_ext as ag
from autogaze_ext.ops.varlen import MODES
from autogaze_ext.vit import gazed_patches, pack_gaze
from autogaze_ext.vit.reference import dense_forward

TOL = 1e-5


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def random_gaze(B, counts, V, seed, p_pad=0.25):
    """Official-style gaze dict: per frame distinct ids (video-global), random padded slots."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for t, n in enumerate(counts):
        cols.append(torch.stack([torch.randperm(V, generator=g)[:n] for _ in range(B)]) + V * t)
    pos = torch.cat(cols, 1)
    pad = torch.rand(pos.shape, generator=g) < p_pad
    pad[:, 0] = False
    return dict(gazing_pos=torch.where(pad, V * 99, pos), if_padded_gazing=pad,
                num_gazing_each_frame=torch.tensor(counts))


def video_like(B, T, side, seed, C=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, side, side, generator=g)


def all_native_tokens(B, T, n, seed):
    """Every token of one native scale gazed, in a shuffled order per frame; also returns the orders."""
    g = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(n, generator=g) for _ in range(T)]
    pos = torch.cat([o + n * t for t, o in enumerate(orders)])[None].repeat(B, 1)
    gaze = dict(gazing_pos=pos, if_padded_gazing=torch.zeros_like(pos, dtype=torch.bool),
                num_gazing_each_frame=torch.full((T,), n))
    return gaze, orders


# ------------------------------------------------------------------------------------------------- tokens


def test_gazed_patches_match_the_full_pyramid():
    video = video_like(2, 3, 64, 0)
    scales, p = (16, 32, 64), 8
    V = sum((s // p) ** 2 for s in scales)
    frames = video.flatten(0, 1)
    pyramid = torch.cat([F.unfold(F.interpolate(frames, size=(s, s), mode="bicubic", align_corners=False), p, stride=p)
                         .transpose(1, 2) for s in scales], 1).flatten(0, 1)  # (B*T*V, C*p*p)
    ids = torch.randint(0, 2 * 3 * V, (50,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(gazed_patches(video, ids, scales, p), pyramid[ids])


def test_pack_gaze_layout():
    counts = [3, 2, 4]
    pos = torch.tensor([[0, 1, 2, 10, 11, 20, 21, 22, 23], [5, 6, 7, 12, 13, 24, 25, 26, 27]])
    pad = torch.zeros_like(pos, dtype=torch.bool)
    pad[0, 1] = pad[0, 3] = pad[0, 4] = pad[1, 8] = True
    gaze = dict(gazing_pos=pos, if_padded_gazing=pad, num_gazing_each_frame=torch.tensor(counts))
    pk = pack_gaze(gaze, 3, 10, num_prefix=2)
    assert pk.lengths == [2 + 2 + 0 + 4, 2 + 3 + 2 + 3]
    assert pk.cu_seqlens.tolist() == [0, 8, 18]
    assert pk.cu_frames.tolist() == [0, 2, 4, 4, 8, 10, 13, 15, 18]
    assert pk.rows.tolist() == [2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17]
    assert pk.prefix_rows.tolist() == [0, 1, 8, 9]
    assert pk.flat_ids.tolist() == [0, 2, 20, 21, 22, 23] + [30 + i for i in (5, 6, 7, 12, 13, 24, 25, 26)]
    assert pk.local_ids.tolist() == [0, 2, 0, 1, 2, 3, 5, 6, 7, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="outside"):
        pack_gaze(dict(gaze, gazing_pos=pos + 5), 3, 10)
    with pytest.raises(ValueError, match="num_gazing_each_frame"):
        pack_gaze(dict(gaze, num_gazing_each_frame=torch.tensor([3, 2, 3])), 3, 10)


# ------------------------------------------------------------------------------------------------- SigLIP


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def tiny_siglip(transformers, seed=0, **kw):
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=224,
               patch_size=16)
    cfg.update(kw)
    torch.manual_seed(seed)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**cfg, attn_implementation="sdpa"))
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_siglip_fixture_matches_official(transformers, official_siglip):
    d, fx = official_siglip
    model = transformers.SiglipVisionModel.from_pretrained(str(d), attn_implementation="sdpa").eval()
    gaze = dict(gazing_pos=fx["gazing_pos"], if_padded_gazing=fx["if_padded_gazing"].bool(),
                num_gazing_each_frame=fx["num_gazing_each_frame"])
    keep = ~gaze["if_padded_gazing"][0]
    vit = ag.accelerate(model, scales=(32, 64, 112, 224), patch_size=16)
    with torch.no_grad():
        out = vit(fx["video"], gaze=gaze)
        emb = vit.embed(fx["video"], vit.pack(fx["video"], gaze))
        dense = dense_forward(vit, fx["video"], gaze, return_padded=True)
    assert out.features.shape == (int(keep.sum()), 128) and out.lengths == [410]
    assert rel_err(out.features, fx["last_hidden_state"][0][keep]) < TOL
    assert rel_err(emb, fx["embeddings"][0][keep]) < TOL
    assert rel_err(dense, fx["last_hidden_state"]) < TOL  # the official approach, padded rows included


def test_siglip_native_scale_frame_independent_is_the_stock_model_per_frame(transformers):
    model = tiny_siglip(transformers, 1)
    vit = ag.accelerate(model, scales=(224,), mode="frame_independent")
    video = video_like(2, 3, 224, 2)
    gaze, orders = all_native_tokens(2, 3, 196, 3)
    with torch.no_grad():
        feats = vit(video, gaze=gaze, as_list=True)
        stock = model(video.flatten(0, 1)).last_hidden_state.view(2, 3, 196, -1)
    for b in range(2):
        for t, order in enumerate(orders):
            assert rel_err(feats[b][196 * t: 196 * (t + 1)], stock[b, t][order]) < TOL


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", ["224/16", "392/14"])
def test_siglip_matches_the_dense_official_approach(transformers, mode, geometry):
    if geometry == "224/16":
        model, scales, side = tiny_siglip(transformers, 4), (32, 64, 112, 224), 224
    else:  # so400m-like: 14-px patches, 27x27 learned grid, resized to every scale
        model, scales, side = tiny_siglip(transformers, 5, image_size=384, patch_size=14), (56, 112, 196, 392), 392
    vit = ag.accelerate(model, scales=scales, mode=mode)
    V = vit.tokens_per_frame
    gaze = random_gaze(2, [30, 10, 0, 20], V, seed=len(mode))
    video = video_like(2, 4, side, 6)
    with torch.no_grad():
        got = vit(video, gaze=gaze).per_video()
        want = dense_forward(vit, video, gaze)
    assert [g.shape[0] for g in got] == [int((~gaze["if_padded_gazing"][b]).sum()) for b in range(2)]
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL


def test_siglip_wrapper_keeps_the_stock_model(transformers):
    model = tiny_siglip(transformers, 7)
    vit = ag.accelerate(model)
    assert vit.model is model
    assert all(a is b for a, b in zip(vit.parameters(), model.parameters()))
    x = video_like(1, 2, 224, 8)[0]
    gaze = random_gaze(1, [5, 5], 265, 9)
    with torch.no_grad():
        before = model(x).last_hidden_state
        vit(x[None], gaze=gaze)
        assert model.config._attn_implementation == "sdpa"
        assert torch.equal(vit(x).last_hidden_state, before)  # plain vit(x) is the stock forward
        assert torch.equal(model(x).last_hidden_state, before)


def test_siglip_padding_and_batch_rows(transformers):
    model = tiny_siglip(transformers, 10)
    vit = ag.accelerate(model)
    video = video_like(3, 3, 224, 11)
    gaze = random_gaze(3, [20, 10, 10], 265, 12, p_pad=0.4)
    with torch.no_grad():
        ref = vit(video, gaze=gaze).per_video()
        # padded slots may hold anything
        garbage = dict(gaze, gazing_pos=torch.where(gaze["if_padded_gazing"], -7, gaze["gazing_pos"]))
        for a, b in zip(vit(video, gaze=garbage).per_video(), ref):
            assert torch.equal(a, b)
        # more padded slots in a frame change nothing
        extra = 5
        pos = torch.cat([gaze["gazing_pos"][:, :20], torch.zeros(3, extra, dtype=torch.long),
                         gaze["gazing_pos"][:, 20:]], 1)
        pad = torch.cat([gaze["if_padded_gazing"][:, :20], torch.ones(3, extra, dtype=torch.bool),
                         gaze["if_padded_gazing"][:, 20:]], 1)
        longer = dict(gazing_pos=pos, if_padded_gazing=pad, num_gazing_each_frame=torch.tensor([20 + extra, 10, 10]))
        for a, b in zip(vit(video, gaze=longer).per_video(), ref):
            assert rel_err(a, b) < TOL
        # a video's features do not depend on the other rows of the batch
        one = {k: v[1:2] if k != "num_gazing_each_frame" else v for k, v in gaze.items()}
        assert rel_err(vit(video[1:2], gaze=one).features, ref[1]) < TOL


def test_siglip_bf16(transformers):
    model = tiny_siglip(transformers, 13)
    video = video_like(1, 2, 224, 14)
    gaze = random_gaze(1, [40, 20], 265, 15)
    with torch.no_grad():
        ref = ag.accelerate(model)(video, gaze=gaze).features
        got = ag.accelerate(model.to(torch.bfloat16))(video.bfloat16(), gaze=gaze).features
    assert got.dtype == torch.bfloat16 and rel_err(got, ref) < 2e-2


def test_siglip_full_model_and_gaze_output(transformers):
    torch.manual_seed(16)
    cfg = transformers.SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2))
    full = transformers.SiglipModel(cfg).eval()
    video = video_like(1, 2, 224, 17)
    d = random_gaze(1, [8, 8], 265, 18)
    gaze = ag.GazeOutput(gazing_pos=d["gazing_pos"], if_padded_gazing=d["if_padded_gazing"],
                         num_gazing_each_frame=d["num_gazing_each_frame"], gazing_mask=[], scales=[32, 64, 112, 224],
                         num_vision_tokens_each_frame=265)
    with torch.no_grad():
        got = ag.accelerate(full)(video, gaze=gaze).features
        want = ag.accelerate(full.vision_model)(video, gaze=d).features
    assert torch.equal(got, want)


def test_errors(transformers):
    model = tiny_siglip(transformers, 19)
    vit = ag.accelerate(model)
    video = video_like(1, 2, 224, 20)
    gaze = random_gaze(1, [4, 4], 265, 21)
    cases = [
        (lambda: ag.accelerate(torch.nn.Linear(3, 3)), TypeError, "supports transformers"),
        (lambda: ag.accelerate(model, patch_size=14), ValueError, "patch_size=14"),
        (lambda: ag.accelerate(model, scales=(64, 32)), ValueError, "ascending"),
        (lambda: ag.accelerate(model, scales=(8, 224)), ValueError, "smaller than the patch"),
        (lambda: ag.accelerate(model, scales="32+64"), TypeError, "scales"),
        (lambda: ag.accelerate(model, mode="full"), ValueError, "mode"),
        (lambda: ag.accelerate(model, attention_backend="flash"), ValueError, "attention_backend"),
        (lambda: vit(video[0], gaze=gaze), ValueError, "video must be"),
        (lambda: vit(video[:, :, :2], gaze=gaze), ValueError, "channels"),
        (lambda: vit(video[:, :1], gaze=gaze), ValueError, "num_gazing_each_frame"),
        (lambda: vit(video.repeat(2, 1, 1, 1, 1), gaze=gaze), ValueError, "rows"),
        (lambda: vit(video, gaze=dict(gaze, num_vision_tokens_each_frame=1060)), ValueError, "1060 tokens"),
        (lambda: vit(video, gaze=dict(gaze, gazing_pos=gaze["gazing_pos"] + 530)), ValueError, "outside"),
        (lambda: vit(video, gaze={"gazing_pos": gaze["gazing_pos"]}), TypeError, "if_padded_gazing"),
        (lambda: vit(video, gaze=gaze, mode="sideways"), ValueError, "mode"),
        (lambda: vit(video, 1, gaze=gaze), TypeError, "extra"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            with torch.no_grad():
                fn()


# ---------------------------------------------------------------------------------------------------- timm


# timm is in no extra: it depends on torchvision, and pip would pick the newest torchvision and with it replace the
# installed torch (README "Building")
TIMM_SKIP = ("timm is not installed (not in [test]: its torchvision dependency would replace your torch); to run "
             "these tests install timm with the torchvision build paired with your torch (README \"Building\")")


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm", reason=TIMM_SKIP)


def tiny_timm(timm, seed=0, **kw):
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=2,
                                                             num_heads=2, mlp_ratio=2.0, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("kw", [dict(), dict(reg_tokens=2), dict(no_embed_class=True, reg_tokens=1),
                                dict(qk_norm=True, init_values=0.1)])
def test_timm_one_frame_bidirectional_is_the_stock_model(timm, kw):
    # one frame, every native token, bidirectional: the class/register tokens see what they see in the stock model
    model = tiny_timm(timm, 1, **kw)
    vit = ag.accelerate(model, scales=(224,), mode="bidirectional")
    video = video_like(2, 1, 224, 2)
    gaze, (order,) = all_native_tokens(2, 1, 196, 3)
    P = vit.adapter.num_prefix
    with torch.no_grad():
        feats = vit(video, gaze=gaze, as_list=True)
        stock = model.forward_features(video[:, 0])
    for b in range(2):
        assert feats[b].shape[0] == P + 196
        assert rel_err(feats[b][:P], stock[b, :P]) < TOL
        assert rel_err(feats[b][P:], stock[b, P:][order]) < TOL


def test_timm_frame_independent_is_the_stock_model_per_frame(timm):
    model = tiny_timm(timm, 4, class_token=False, global_pool="avg")
    vit = ag.accelerate(model, scales=(224,), mode="frame_independent")
    video = video_like(1, 3, 224, 5)
    gaze, orders = all_native_tokens(1, 3, 196, 6)
    with torch.no_grad():
        feats = vit(video, gaze=gaze).features
        stock = model.forward_features(video[0])
    for t, order in enumerate(orders):
        assert rel_err(feats[196 * t: 196 * (t + 1)], stock[t][order]) < TOL


@pytest.mark.parametrize("mode", MODES)
def test_timm_matches_the_dense_official_approach(timm, mode):
    model = tiny_timm(timm, 7, reg_tokens=1)
    vit = ag.accelerate(model, mode=mode)
    gaze = random_gaze(2, [25, 0, 12], 265, 8)
    video = video_like(2, 3, 224, 9)
    with torch.no_grad():
        got = vit(video, gaze=gaze)
        want = dense_forward(vit, video, gaze)
    assert got.num_prefix == 2
    for g, w in zip(got.per_video(), want):
        assert rel_err(g, w) < TOL


def test_timm_unsupported_blocks(timm):
    model = tiny_timm(timm, 10)
    model.blocks[1] = timm.models.vision_transformer.ResPostBlock(64, 2)
    with pytest.raises(TypeError, match="blocks\\[1\\] is a ResPostBlock"):
        ag.accelerate(model)


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cuda_siglip_fixture_and_bf16(transformers, official_siglip, backend):
    d, fx = official_siglip
    model = transformers.SiglipVisionModel.from_pretrained(str(d), attn_implementation="sdpa").eval().cuda()
    gaze = {k: fx[k].cuda() for k in ("gazing_pos", "num_gazing_each_frame")}
    gaze["if_padded_gazing"] = fx["if_padded_gazing"].bool().cuda()
    keep = ~fx["if_padded_gazing"][0].bool()
    video = fx["video"].cuda()
    with torch.no_grad():
        fp32 = ag.accelerate(model, attention_backend=backend)(video, gaze=gaze).features
        model.to(torch.bfloat16)
        bf16 = ag.accelerate(model, attention_backend=backend)(video.bfloat16(), gaze=gaze).features
    assert rel_err(fp32.cpu(), fx["last_hidden_state"][0][keep]) < TOL
    assert bf16.dtype == torch.bfloat16 and rel_err(bf16.cpu(), fx["last_hidden_state"][0][keep]) < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_timm_matches_the_dense_official_approach(timm, mode):
    model = tiny_timm(timm, 11, reg_tokens=1).cuda()
    vit = ag.accelerate(model, mode=mode)
    gaze = {k: v.cuda() for k, v in random_gaze(3, [40, 3, 0, 25], 265, 12).items()}
    video = video_like(3, 4, 224, 13).cuda()
    with torch.no_grad():
        got = vit(video, gaze=gaze).per_video()
        want = dense_forward(vit, video, gaze)
    for g, w in zip(got, want):
        assert rel_err(g.cpu(), w.cpu()) < TOL


# ---------------------------------------------------------------------------------------------- CUDA graphs


def test_bucket_rows():
    from autogaze_ext.vit.graphs import bucket_rows

    assert [bucket_rows(n) for n in (1, 64, 65, 127, 128, 129, 1000, 1024, 1025)] == \
        [64, 64, 128, 128, 128, 192, 1024, 1024, 1152]
    for n in range(1, 70000, 37):  # never smaller; less than 64 rows or 12.5% larger
        b = bucket_rows(n)
        assert n <= b and b - n < max(64, n // 8 + 1) and b % 64 == 0


def test_cuda_graphs_need_cuda(transformers):
    vit = ag.accelerate(tiny_siglip(transformers, 3), cuda_graphs=True)
    gaze = random_gaze(1, [5, 2], 265, 4)
    with pytest.raises(RuntimeError, match="cuda_graphs=True needs CUDA"), torch.no_grad():
        vit(video_like(1, 2, 224, 5), gaze=gaze)
    with pytest.raises(TypeError, match="cuda_graphs"):
        ag.accelerate(tiny_siglip(transformers, 3), cuda_graphs="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["siglip", "timm"])
def test_cuda_graphed_block_stack_matches_eager(transformers, family):
    from autogaze_ext.ops import has_kernel

    if not has_kernel("varlen_attention", "cuda"):
        pytest.skip("graphs need the compiled varlen_attention kernel")
    if family == "timm":
        model = tiny_timm(pytest.importorskip("timm", reason=TIMM_SKIP), 21, reg_tokens=1).cuda()
    else:
        model = tiny_siglip(transformers, 21).cuda()
    from autogaze_ext.vit.graphs import bucket_rows

    eager = ag.accelerate(model, cuda_graphs=False)
    graphed = ag.accelerate(model, cuda_graphs=True)
    auto = ag.accelerate(model)
    # token counts sharing a bucket, another mode, a one-token batch
    cases = [(2, [40, 3, 0, 25], "block_causal"), (2, [38, 5, 2, 20], "block_causal"),
             (2, [30, 9, 1, 24], "causal"), (1, [1, 0, 0, 0], "block_causal")]
    keys = set()
    for seed, (B, counts, mode) in enumerate(cases):
        gaze = {k: v.cuda() for k, v in random_gaze(B, counts, 265, 30 + seed).items()}
        video = video_like(B, 4, 224, 40 + seed).cuda()
        with torch.no_grad():
            want = eager(video, gaze=gaze, mode=mode).features
            for _ in range(2):  # the first call captures, the second replays
                got = graphed(video, gaze=gaze, mode=mode).features
                assert got.shape == want.shape and rel_err(got, want) < TOL
        keys.add((bucket_rows(want.shape[0]), B, mode))
        with torch.enable_grad():  # autograd: auto falls back to the eager blocks
            assert rel_err(auto(video, gaze=gaze, mode=mode).features.detach(), want) < TOL
    assert len(graphed._graphs) == len(keys) and len(auto._graphs) == 0 and len(eager._graphs) == 0


def test_position_table_follows_in_place_weight_updates(transformers):
    model = tiny_siglip(transformers, 8)
    vit = ag.accelerate(model)
    gaze, video = random_gaze(1, [6, 4], 265, 9), video_like(1, 2, 224, 10)
    with torch.no_grad():
        before = vit(video, gaze=gaze).features
        vit.adapter.core.embeddings.position_embedding.weight.mul_(-2.0)
        after = vit(video, gaze=gaze).features
        fresh = ag.accelerate(model)(video, gaze=gaze).features
    assert rel_err(after, before) > 1e-3 and torch.equal(after, fresh)
    # with autograd the table is recomputed in the graph: gradients reach the position embedding
    out = vit(video, gaze=gaze).features.sum()
    out.backward()
    assert vit.adapter.core.embeddings.position_embedding.weight.grad.abs().sum() > 0
