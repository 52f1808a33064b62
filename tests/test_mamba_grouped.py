"""One grouped selective scan for several Mambas (the four JEGO directions): the same numbers as separate calls.

Truths: a hand-written Mamba forward per module (tests/test_mamba_modules.py), the separate per-direction calls of
the previous release, and the shipped checkpoint's matches with the previous code path.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import asmamba.mamba.selective_scan as ss
from asmamba.checkpoint import shipped_weights
from asmamba.mamba.multihead import MultiHeadMamba, grouped_forward
from asmamba.model.joint_mamba import JointMambaScan
from test_mamba_modules import _randomise, manual_head


@pytest.fixture(params=["compiled", "pytorch"])
def backend(request, monkeypatch):
    """Run the test with the compiled CPU kernel and with the PyTorch scan."""
    if request.param == "compiled":
        from asmamba.mamba import compiled_scan

        if not compiled_scan.available():
            pytest.skip("numba is not importable here")
    monkeypatch.setattr(ss, "prefer_compiled", request.param == "compiled")
    return request.param


@pytest.mark.parametrize("heads", ["multi", "single"])
def test_grouped_forward_equals_each_module_by_hand(backend, heads):
    torch.manual_seed(0)
    mambas = [MultiHeadMamba(8, (6, 3), heads=heads, d_state=4, d_conv=3).double() for _ in range(3)]
    for k, m in enumerate(mambas):
        _randomise(m, seed=10 + k)
    inputs = [torch.randn(2, 11, 8, dtype=torch.float64) for _ in mambas]
    grouped = grouped_forward(mambas, inputs)
    for m, x, streams in zip(mambas, inputs, grouped):
        if heads == "multi":
            expected = [manual_head(m, x, 0), manual_head(m, x, 1)]
        else:
            full = manual_head(m, x, 0)
            expected = [full[..., :6], full[..., 6:]]
        for got, want in zip(streams, expected):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_grouped_forward_gradients_equal_separate_calls(backend):
    torch.manual_seed(1)
    mambas = [MultiHeadMamba(16, (16, 8), d_state=8).double() for _ in range(4)]
    inputs = [torch.randn(2, 40, 16, dtype=torch.float64, requires_grad=True) for _ in mambas]

    def loss(outs):
        return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for s in outs for o in s)

    params = [p for m in mambas for p in m.parameters()]
    grads = torch.autograd.grad(loss(grouped_forward(mambas, inputs)), params + inputs)
    ref = torch.autograd.grad(loss([m(x) for m, x in zip(mambas, inputs)]), params + inputs)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


def test_grouped_forward_rejects_mismatched_modules():
    a, b = MultiHeadMamba(8, (6, 3), d_state=4), MultiHeadMamba(8, (6, 3), d_state=8)
    x = torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="share d_inner, heads and d_state"):
        grouped_forward([a, b], [x, x])
    with pytest.raises(ValueError, match="share d_inner, heads and d_state"):
        grouped_forward([a, a], [x, torch.randn(1, 6, 8)])
    with pytest.raises(ValueError, match="2 modules but 1 inputs"):
        grouped_forward([a, a], [x])


@pytest.mark.parametrize("scan", ["jego", "hilbert"])
def test_joint_scan_grouped_equals_per_direction(backend, scan, monkeypatch):
    torch.manual_seed(2)
    joint = JointMambaScan(16, (16, 8), scan=scan, heads="multi", d_state=4).double()
    for k, m in enumerate(joint.mambas):
        _randomise(m, seed=20 + k)  # four different sets of weights
    f0 = torch.randn(2, 16, 6, 8, dtype=torch.float64, requires_grad=True)
    f1 = torch.randn(2, 16, 6, 8, dtype=torch.float64, requires_grad=True)
    outs = {}
    for grouped in (True, False):
        monkeypatch.setattr(joint, "grouped_scan", grouped)
        result = joint(f0, f1)
        flat = [t for pair in result for t in pair]
        grads = torch.autograd.grad(sum((t * t.detach().sin()).sum() for t in flat), [f0, f1, *joint.parameters()])
        outs[grouped] = flat, grads
    for got, want in zip(*[outs[g][0] + list(outs[g][1]) for g in (True, False)]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.skipif(not shipped_weights(), reason="no trained weights ship in asmamba/weights/")
@pytest.mark.parametrize("name", sorted(shipped_weights()))
def test_shipped_checkpoint_loads_and_matches_as_with_the_previous_scan_path(monkeypatch, name):
    """Every shipped checkpoint's keys are the model's (strict load) and its matches are those of the previous
    release's code path (PyTorch scan, one scan call per direction) up to float32 rounding."""
    from asmamba import ASMamba
    from asmamba.checkpoint import read_checkpoint
    from asmamba.profile import stereo_pair

    matcher = ASMamba(pretrained=name)
    state = read_checkpoint(shipped_weights()[name])["state_dict"]
    assert set(state) == set(matcher.net.state_dict())
    pair = stereo_pair(240, 320)
    torch.set_num_threads(2)
    with torch.inference_mode():
        current = matcher(pair)
        monkeypatch.setattr(ss, "prefer_compiled", False)
        monkeypatch.setattr(JointMambaScan, "grouped_scan", False)
        previous = matcher(pair)
    assert len(current["keypoints0"]) == len(previous["keypoints0"]) > 300
    # keypoints0 sit on the coarse grid with the first release's fine stage; two_stage refines them too
    atol0 = 1e-3 if matcher.config.fine.kind == "two_stage" else 0.0
    torch.testing.assert_close(current["keypoints0"], previous["keypoints0"], atol=atol0, rtol=0)
    torch.testing.assert_close(current["keypoints1"], previous["keypoints1"], atol=1e-3, rtol=0)
    torch.testing.assert_close(current["confidence"], previous["confidence"], atol=1e-4, rtol=0)
    assert OmegaConf.select(matcher.config, "mamba.scan") in ("jego", "hilbert")
