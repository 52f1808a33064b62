"""Model pieces against independent references: coarse matching vs a naive loop, fine windows vs bilinear
sampling, the adaptive span rule vs ASpanFormer's formula."""

import pytest
import torch
import torch.nn.functional as F

from asmamba.config import load_config
from asmamba.model import coarse_matching
from asmamba.model.coarse_matching import CoarseMatching, border_mask, cell_centres
from asmamba.model.fine_matching import gather_windows
from asmamba.model.local_path import sample_cells, span_offsets


def test_cell_centres_are_pixel_centres_of_the_cell():
    ids = torch.tensor([0, 1, 5, 7])  # grid 3 wide
    xy = cell_centres(ids, 3, 8)
    # cell (c, r) covers pixels 8c .. 8c+7 -> centre 8c + 3.5
    assert torch.equal(xy, torch.tensor([[3.5, 3.5], [11.5, 3.5], [19.5, 11.5], [11.5, 19.5]]))


def test_border_mask_counts():
    m = border_mask(torch.tensor([[6, 5], [4, 4]]), 6, 6, 1).reshape(2, 6, 6)
    assert m[0].sum() == 4 * 3 and m[1].sum() == 2 * 2
    assert not m[0, 0].any() and not m[0, :, 4:].any()


def _naive_mutual_matches(conf, thr):
    B, L0, L1 = conf.shape
    found = set()
    for b in range(B):
        for i in range(L0):
            j = int(conf[b, i].argmax())
            if conf[b, i, j] > thr and int(conf[b, :, j].argmax()) == i:
                found.add((b, i, j))
    return found


def _coarse_paths(monkeypatch, path):
    """'dense' builds conf_matrix with gradients' code path; 'one_pass' is inference within the memory budget (the
    matrix built in place); 'streamed' is inference above it (budget 0 via PATH_OVERRIDES), in blocks of 5 rows."""
    if path == "streamed":
        monkeypatch.setattr(coarse_matching, "STREAM_BLOCK_ELEMENTS", 5 * 24 * 2)
        monkeypatch.setattr(coarse_matching, "STREAM_MIN_ROWS", 1)
    return {"keep_conf_matrix": path == "dense"}


def _reference_conf(cm, f0, f1, C, temperature, valid0=None, valid1=None):
    with torch.no_grad():
        sim = torch.einsum("blc,bsc->bls", cm.proj(f0), cm.proj(f1)) / (C * temperature)
        if valid0 is not None:
            sim = sim.masked_fill(~valid0[:, :, None], -1e9).masked_fill(~valid1[:, None, :], -1e9)
        return sim.softmax(1) * sim.softmax(2)


COARSE_PATHS = pytest.mark.parametrize("path", ["dense", "one_pass", "streamed"])
PATH_OVERRIDES = {"dense": [], "one_pass": [], "streamed": ["coarse.dense_budget_mb=0"]}


def _run_coarse_case(monkeypatch, path, seed, overrides, B, h, w):
    """Random features on a full (unpadded) h x w grid through CoarseMatching; returns (cfg, cm, data, ref conf)."""
    torch.manual_seed(seed)
    cfg = load_config("tiny", list(overrides) + PATH_OVERRIDES[path])
    cm = CoarseMatching(cfg).eval()
    C = cfg.dims.c_match
    f0, f1 = torch.randn(B, h * w, C), torch.randn(B, h * w, C)
    full = torch.tensor([[h, w]] * B)
    data = {"hw_c": (h, w), "stride_c": 8, "valid_hw0_c": full, "valid_hw1_c": full,
            **_coarse_paths(monkeypatch, path)}
    with torch.no_grad():
        cm(f0, f1, data)
    return cfg, cm, data, _reference_conf(cm, f0, f1, C, cfg.coarse.temperature)


@COARSE_PATHS
def test_coarse_matching_matches_naive_dual_softmax_mnn(monkeypatch, path):
    cfg, cm, data, ref = _run_coarse_case(monkeypatch, path, 0, ["coarse.border_rm=0", "coarse.threshold=0.01"],
                                          2, 4, 6)
    if path == "dense":
        assert torch.allclose(data["conf_matrix"], ref, atol=1e-6)
    else:
        assert "conf_matrix" not in data  # inference does not keep the L0 x L1 matrix
    got = set(zip(data["b_ids"].tolist(), data["i_ids"].tolist(), data["j_ids"].tolist()))
    assert got == _naive_mutual_matches(ref, cfg.coarse.threshold)
    assert got  # random features at this threshold do give matches
    assert torch.allclose(data["mconf"], ref[data["b_ids"], data["i_ids"], data["j_ids"]], atol=1e-6)


@COARSE_PATHS
def test_coarse_matching_respects_padding(monkeypatch, path):
    torch.manual_seed(1)
    cfg = load_config("tiny", ["coarse.border_rm=0", "coarse.threshold=0.0"] + PATH_OVERRIDES[path])
    cm = CoarseMatching(cfg).eval()
    h, w, C = 4, 4, cfg.dims.c_match
    f = torch.randn(1, h * w, C)
    data = {"hw_c": (h, w), "stride_c": 8, "valid_hw0_c": torch.tensor([[2, 3]]),
            "valid_hw1_c": torch.tensor([[4, 4]]), **_coarse_paths(monkeypatch, path)}
    with torch.no_grad():
        cm(f, f.clone(), data)
    rows, cols = data["i_ids"] // w, data["i_ids"] % w
    assert (rows < 2).all() and (cols < 3).all() and len(rows) > 0
    if path == "dense":
        assert data["conf_matrix"][0].reshape(h, w, -1)[2:].abs().max() < 1e-6
    valid0 = border_mask(torch.tensor([[2, 3]]), h, w, 0)
    ref = _reference_conf(cm, f, f, C, cfg.coarse.temperature, valid0, torch.ones_like(valid0))
    assert set(zip(data["b_ids"].tolist(), data["i_ids"].tolist(), data["j_ids"].tolist())) == \
        _naive_mutual_matches(ref, cfg.coarse.threshold)


@pytest.mark.parametrize("window", [5, 7])
def test_gather_windows_equals_bilinear_sampling_at_cell_centres(window):
    torch.manual_seed(0)
    B, C, h, w, ratio = 2, 3, 3, 4, 4
    fine = torch.randn(B, C, ratio * h, ratio * w)
    cells = torch.arange(h * w)
    got = gather_windows(fine, torch.ones_like(cells), cells, window, ratio)  # (h*w, ww, C) of batch item 1
    fine = fine[1:]
    H, W = fine.shape[-2:]
    half = (window - 1) // 2
    for cell in range(h * w):
        r, c = divmod(cell, w)
        cy, cx = ratio * r + (ratio - 1) / 2, ratio * c + (ratio - 1) / 2  # fine coordinates of the centre
        for k in range(window * window):
            dy, dx = divmod(k, window)
            y, x = cy + dy - half, cx + dx - half
            grid = torch.tensor([[[[(x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1]]]], dtype=fine.dtype)
            ref = F.grid_sample(fine, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0, 0]
            assert torch.allclose(got[cell, k], ref, atol=1e-5), (cell, k)


def test_span_offsets_follow_aspanformer_rule():
    sigma = torch.tensor([[0.1, 4.0]])  # confident in x, uncertain in y
    off = span_offsets(sigma, k=5, radius_sigmas=5.0, min_spacing=1.0)  # (1, 25, 2)
    xs, ys = off[0, :, 0].unique(), off[0, :, 1].unique()
    assert torch.allclose(xs, torch.arange(-2.0, 3.0))  # spacing max(1, 2*5*0.1/5) = 1
    assert torch.allclose(ys, torch.arange(-2.0, 3.0) * 8.0)  # spacing 2*5*4/5 = 8 -> radius 16 cells ~ 4 sigma
    assert torch.allclose(off[0, 1], torch.tensor([-1.0, -16.0]))  # row-major over the grid


def test_sample_cells_reads_exact_cells():
    feat = torch.arange(12.0).reshape(1, 1, 3, 4)
    xy = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.5, 1.0], [-5.0, 0.0]]])
    out = sample_cells(feat, xy)[0, :, 0]
    assert torch.allclose(out, torch.tensor([0.0, 11.0, 5.5, 0.0]), atol=1e-5)


@COARSE_PATHS
def test_union_rule_matches_naive_one_way_nearest_neighbours(monkeypatch, path):
    B, h, w = 2, 3, 5
    cfg, cm, data, ref = _run_coarse_case(
        monkeypatch, path, 2, ["coarse.border_rm=0", "coarse.threshold=0.01", "coarse.rule=union"], B, h, w)
    expected = set()
    for b in range(B):
        for i in range(h * w):  # one-way nearest neighbours in both directions, above the threshold
            j = int(ref[b, i].argmax())
            if ref[b, i, j] > cfg.coarse.threshold:
                expected.add((b, i, j))
        for j in range(h * w):
            i = int(ref[b, :, j].argmax())
            if ref[b, i, j] > cfg.coarse.threshold:
                expected.add((b, i, j))
    triples = list(zip(data["b_ids"].tolist(), data["i_ids"].tolist(), data["j_ids"].tolist()))
    assert set(triples) == expected and len(triples) == len(expected) > 0
    assert triples == sorted(triples)  # (b, i, j) order, as torch.nonzero of the dense mask
    assert torch.allclose(data["mconf"], ref[data["b_ids"], data["i_ids"], data["j_ids"]], atol=1e-6)


def test_joint_window_encoder_pair_tokens_equal_the_full_bidirectional_pass():
    """encode_pair skips tokens and backward steps: the tokens it returns equal the full pass's."""
    from asmamba.model.fine_matching import JointWindowEncoder

    torch.manual_seed(0)
    enc = JointWindowEncoder(16, 4).double()
    win0, win1 = torch.randn(3, 9, 16, dtype=torch.float64), torch.randn(3, 9, 16, dtype=torch.float64)
    full = enc(torch.cat([win0, win1], dim=1))
    centre, second = enc.encode_pair(win0, win1, 4)
    torch.testing.assert_close(centre, full[:, 4], atol=1e-12, rtol=0)
    torch.testing.assert_close(second, full[:, 9:], atol=1e-12, rtol=0)


@COARSE_PATHS
def test_covisibility_filter_drops_exactly_the_vetoed_cells(monkeypatch, path):
    torch.manual_seed(3)
    B, h, w = 1, 4, 5
    cfg = load_config("tiny", ["coarse.border_rm=0", "coarse.threshold=0.0", "coarse.covisibility_threshold=0.5"]
                      + PATH_OVERRIDES[path])
    cm = CoarseMatching(cfg).eval()
    C = cfg.dims.c_match
    f0, f1 = torch.randn(B, h * w, C), torch.randn(B, h * w, C)
    full = torch.tensor([[h, w]])
    covis0 = torch.rand(B, h * w)
    covis1 = torch.rand(B, h * w)
    data = {"hw_c": (h, w), "stride_c": 8, "valid_hw0_c": full, "valid_hw1_c": full, "covisibility0": covis0,
            "covisibility1": covis1, **_coarse_paths(monkeypatch, path)}
    with torch.no_grad():
        cm(f0, f1, data)
    ref = _reference_conf(cm, f0, f1, C, cfg.coarse.temperature)  # the filter vetoes matches, not the softmax
    expected = {(b, i, j) for b, i, j in _naive_mutual_matches(ref, 0.0) if covis0[b, i] > 0.5 and covis1[b, j] > 0.5}
    got = set(zip(data["b_ids"].tolist(), data["i_ids"].tolist(), data["j_ids"].tolist()))
    assert got == expected
    assert len(expected) < len(_naive_mutual_matches(ref, 0.0))  # the veto did remove something
