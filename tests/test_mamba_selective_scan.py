"""The selective scan against a step-by-step recurrence written here (float64 values and gradients): the PyTorch
scan, the compiled CPU kernel (numba) and the backend choice."""

from __future__ import annotations

import itertools
import math
import os
import sys
import types

import pytest
import torch

import asmamba.mamba.selective_scan as ss
from asmamba.ops import selective_scan


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence of mamba-ssm's selective_scan_ref, one channel group lookup and one step at a time.

    Returns (out (b, d, L), last_state (b, d, N)).
    """
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta)))
    B4 = B if B.dim() == 4 else B[:, None]
    C4 = C if C.dim() == 4 else C[:, None]
    channel = torch.arange(dim)
    B_d = B4[:, channel // (dim // B4.shape[1])]  # (b, d, N, L)
    C_d = C4[:, channel // (dim // C4.shape[1])]
    h = torch.zeros(batch, dim, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B_d[..., t] * u[:, :, t, None]
        ys.append((h * C_d[..., t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D[:, None] * u
    if z is not None:
        out = out * z * torch.sigmoid(z)
    return out, h


def make_inputs(batch=2, dim=6, n_state=3, length=37, groups_B=None, groups_C=None, seed=0, dtype=torch.float64,
                signed_delta=True):
    """Random scan inputs; without ``signed_delta`` the step sizes are >= 0, as they are after a softplus."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "u": rand(batch, dim, length),
        "delta": 0.5 * (rand(batch, dim, length) if signed_delta else rand(batch, dim, length).abs()),
        "A": -torch.exp(rand(dim, n_state)),
        "B": rand(batch, n_state, length) if groups_B is None else rand(batch, groups_B, n_state, length),
        "C": rand(batch, n_state, length) if groups_C is None else rand(batch, groups_C, n_state, length),
        "D": rand(dim),
        "z": rand(batch, dim, length),
        "delta_bias": 0.5 * (rand(dim) if signed_delta else rand(dim).abs()),
    }


def check_against_naive(inputs, options, scan, atol=1e-9):
    """Values of out and last_state and the gradients of a random projection of both w.r.t. every input."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out, last = scan(**leaves, **options, return_last_state=True)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref_out, ref_last = naive_scan(**ref_leaves, **options)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=0)
    torch.testing.assert_close(last, ref_last, atol=atol, rtol=0)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    w_last = torch.randn(last.shape, generator=g, dtype=last.dtype)
    grads = torch.autograd.grad((out * w_out).sum() + (last * w_last).sum(), list(leaves.values()))
    ref_grads = torch.autograd.grad((ref_out * w_out).sum() + (ref_last * w_last).sum(), list(ref_leaves.values()))
    for name, grad, ref in zip(leaves, grads, ref_grads):
        torch.testing.assert_close(grad, ref, atol=atol, rtol=0, msg=f"gradient of {name}")


OPTION_COMBOS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", OPTION_COMBOS)
@pytest.mark.parametrize("layout", ["3d", "4d"])
def test_scan_matches_naive_every_option(use_D, use_z, use_bias, softplus, layout):
    groups = None if layout == "3d" else 3
    inputs = make_inputs(groups_B=groups, groups_C=groups, signed_delta=softplus)
    if not use_D:
        del inputs["D"]
    if not use_z:
        del inputs["z"]
    if not use_bias:
        del inputs["delta_bias"]

    def scan(**kw):  # small explicit blocking: several blocks, a padded last block
        return ss.selective_scan_pytorch(**kw, chunk_len=4, chunks_per_block=3)

    check_against_naive(inputs, {"delta_softplus": softplus}, scan)


@pytest.mark.parametrize(
    "length,chunk_len,chunks_per_block",
    [(1, None, None), (1, 4, 3), (37, None, None), (37, 1, 1), (37, 5, 1), (37, 37, 1), (37, 3, 20), (12, 4, 3),
     (50, 7, 2)],
)
def test_scan_blocking_and_lengths(length, chunk_len, chunks_per_block):
    inputs = make_inputs(length=length, groups_B=2, groups_C=2)

    def scan(**kw):
        return ss.selective_scan_pytorch(**kw, chunk_len=chunk_len, chunks_per_block=chunks_per_block)

    check_against_naive(inputs, {"delta_softplus": True}, scan)
    with torch.no_grad():  # inference keeps no chunk-start states: a different code path
        out, last = scan(**inputs, delta_softplus=True, return_last_state=True)
    ref_out, ref_last = naive_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, ref_out, atol=1e-9, rtol=0)
    torch.testing.assert_close(last, ref_last, atol=1e-9, rtol=0)


@pytest.mark.parametrize("groups_B,groups_C", [(2, None), (None, 3), (2, 3), (6, 6)])
def test_scan_mixed_groups(groups_B, groups_C):
    check_against_naive(make_inputs(groups_B=groups_B, groups_C=groups_C), {"delta_softplus": True}, selective_scan)


def test_public_scan_and_reference_match_naive():
    inputs = make_inputs(length=23, groups_B=2)
    check_against_naive(inputs, {"delta_softplus": True}, selective_scan)
    check_against_naive(inputs, {"delta_softplus": True}, ss.selective_scan_reference)
    out = selective_scan(**inputs)
    assert isinstance(out, torch.Tensor) and out.shape == inputs["u"].shape


def test_scan_stable_for_large_decays():
    """Trained layers reach delta ~ 1 and A ~ -50: per-step log-decays of -50 and block sums far below."""
    g = torch.Generator().manual_seed(3)
    b, d, n, length = 2, 8, 4, 300
    u = torch.randn(b, d, length, generator=g)
    delta = torch.rand(b, d, length, generator=g) * 3.0  # up to 3, no softplus
    A = -torch.rand(d, n, generator=g) * 60.0
    A[0] = -1e-3  # and one nearly persistent channel
    B = torch.randn(b, n, length, generator=g)
    C = torch.randn(b, n, length, generator=g)
    out, last = selective_scan(u, delta, A, B, C, return_last_state=True)
    ref_out, ref_last = naive_scan(u.double(), delta.double(), A.double(), B.double(), C.double())
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    torch.testing.assert_close(out.double(), ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last.double(), ref_last, atol=1e-4, rtol=1e-4)
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C)]
    selective_scan(*leaves).square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    # log-decays of -1000 per step underflow to zero decay: the state is just the last input
    huge = selective_scan(u, torch.full_like(delta, 20.0), A - 50.0, B, C, return_last_state=True)[1]
    expected = 20.0 * u[:, :, -1, None] * B[:, None, :, -1]
    torch.testing.assert_close(huge, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scan_low_precision_inputs(dtype):
    inputs = make_inputs(length=20, dtype=torch.float64)
    low = {k: v.to(dtype) for k, v in inputs.items()}
    out, last = selective_scan(**low, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32  # scanned in float32, returned in u's dtype
    ref_out, _ = naive_scan(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)


@pytest.mark.parametrize("batch,groups", [(7, None), (9, 2)])
def test_scan_short_sequences_run_in_batch_slices(monkeypatch, batch, groups):
    """A short sequence over a large batch runs slice by slice (here 2 items a slice, the last slice shorter)."""
    monkeypatch.setitem(ss.scan_blocking, "slice_elements", 2 * 6 * 3)
    assert ss.choose_slicing(batch, 6 * 3, 12) == (2, 12, 1)
    inputs = make_inputs(batch=batch, length=12, groups_B=groups, groups_C=groups)
    check_against_naive(inputs, {"delta_softplus": True}, ss.selective_scan_pytorch)
    with torch.no_grad():
        out = ss.selective_scan_pytorch(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, naive_scan(**inputs, delta_softplus=True)[0], atol=1e-9, rtol=0)


def test_choose_slicing_only_for_short_sequences_over_large_batches():
    per_item = 64 * 4
    assert ss.choose_slicing(3571, per_item, 50) == (ss.scan_blocking["slice_elements"] // per_item, 50, 1)
    assert ss.choose_slicing(3571, per_item, 9600) == (3571, None, None)  # long: blocked over time instead
    assert ss.choose_slicing(2, per_item, 50) == (2, None, None)  # small batch: nothing to slice


def test_choose_blocking_covers_length():
    for length, per_step in [(1, 1), (7, 10**7), (9600, 8192), (41, 512 * 16 * 64), (100000, 16)]:
        chunk_len, chunks = ss.choose_blocking(length, per_step)
        assert chunk_len >= 1 and chunks >= 1
        assert chunk_len * chunks <= max(length, 1) + chunk_len  # a block never exceeds the sequence by a chunk


def _bad(**changes):
    inputs = make_inputs(length=5)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (_bad(A=torch.complex(torch.randn(6, 3), torch.randn(6, 3))), ValueError, "complex A"),
        (_bad(u=torch.randn(2, 6)), ValueError, "u must be"),
        (_bad(delta=torch.randn(2, 6, 4, dtype=torch.float64)), ValueError, "delta must"),
        (_bad(A=torch.randn(5, 3, dtype=torch.float64)), ValueError, "A must"),
        (_bad(B=torch.randn(2, 4, 5, dtype=torch.float64)), ValueError, "B must"),
        (_bad(C=torch.randn(2, 3, dtype=torch.float64)), ValueError, "C must"),
        (_bad(B=torch.randn(2, 4, 3, 5, dtype=torch.float64)), ValueError, "B has 4 groups"),
        (_bad(D=torch.randn(5, dtype=torch.float64)), ValueError, "D must"),
        (_bad(delta_bias=torch.randn(6, 1, dtype=torch.float64)), ValueError, "delta_bias must"),
        (_bad(z=torch.randn(2, 6, 4, dtype=torch.float64)), ValueError, "z must"),
        (_bad(u=torch.ones(2, 6, 5, dtype=torch.long)), TypeError, "u must be a floating"),
        (_bad(B=[[1.0]]), TypeError, "B must be a torch.Tensor"),
        (_bad(A=torch.randn(6, 3, device="meta")), ValueError, "A is on meta"),
        (make_inputs(length=0), ValueError, "at least 1"),
    ],
)
def test_scan_rejects_bad_inputs(inputs, error, match):
    with pytest.raises(error, match=match):
        selective_scan(**inputs)


def test_scan_rejects_bad_blocking():
    with pytest.raises(ValueError, match="chunk_len"):
        ss.selective_scan_pytorch(**make_inputs(length=5), chunk_len=0)


# ----------------------------------------------------------------------------------------------------------------
# backend choice: mamba-ssm's kernel when it imports, the PyTorch scan otherwise
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """Install a stand-in ``mamba_ssm.ops.selective_scan_interface`` and make CPU tensors look kernel-eligible."""
    calls = []
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")

    def fake_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        calls.append({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
                      "delta_softplus": delta_softplus, "return_last_state": return_last_state})
        return ss.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    interface.selective_scan_fn = fake_fn
    interface.selective_scan_cuda = object()  # the compiled extension "loaded"
    package, ops = types.ModuleType("mamba_ssm"), types.ModuleType("mamba_ssm.ops")
    package.ops, ops.selective_scan_interface = ops, interface
    monkeypatch.setitem(sys.modules, "mamba_ssm", package)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", ops)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", interface)
    monkeypatch.setattr(ss, "_mamba_ssm_checked", False)
    monkeypatch.setattr(ss, "_mamba_ssm_fn", None)
    monkeypatch.setattr(ss, "_kernel_accepts", lambda u, A, B, C: True)
    return interface, calls


def test_backend_uses_mamba_ssm_kernel_with_its_dtypes(fake_mamba_ssm):
    _, calls = fake_mamba_ssm
    inputs = {k: v.to(torch.float16) for k, v in make_inputs(length=6).items()}
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert len(calls) == 1 and ss.mamba_ssm_available()
    call = calls[0]
    # the kernel wants delta, B, C, z in u's dtype and A, D, delta_bias in float32
    assert {call[k].dtype for k in ("u", "delta", "B", "C", "z")} == {torch.float16}
    assert {call[k].dtype for k in ("A", "D", "delta_bias")} == {torch.float32}
    assert call["delta_softplus"] is True and call["return_last_state"] is True
    assert out.dtype == torch.float16 and last.shape == (2, 6, 3)
    assert ss.backend_name("cuda") == "mamba_ssm" and ss.backend_name("cpu") in ("numba", "pytorch")
    ss.prefer_mamba_ssm = False
    try:
        selective_scan(**inputs)
        assert len(calls) == 1 and ss.backend_name("cuda") == "pytorch"
    finally:
        ss.prefer_mamba_ssm = True


def test_backend_falls_back_without_compiled_extension(fake_mamba_ssm):
    interface, calls = fake_mamba_ssm
    interface.selective_scan_cuda = None  # newer mamba-ssm imports without it and fails only when called
    out = selective_scan(**make_inputs(length=6))
    assert not calls and not ss.mamba_ssm_available() and out.shape == (2, 6, 6)


def test_backend_falls_back_on_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes the import raise ImportError
    monkeypatch.setattr(ss, "_mamba_ssm_checked", False)
    monkeypatch.setattr(ss, "_mamba_ssm_fn", None)
    assert not ss.mamba_ssm_available()
    assert ss.backend_name("cuda") == "pytorch" and ss.backend_name() in ("pytorch", "numba", "mamba_ssm")


# ----------------------------------------------------------------------------------------------------------------
# the compiled CPU kernel (numba)
# ----------------------------------------------------------------------------------------------------------------

import asmamba.mamba.compiled_scan as compiled  # noqa: E402 (the module imports without numba; its kernels need it)

needs_numba = pytest.mark.skipif(not compiled.available(), reason="numba (a core dependency) is not importable here")


@needs_numba
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus", OPTION_COMBOS)
@pytest.mark.parametrize("layout", ["3d", "4d"])
def test_compiled_scan_matches_naive_every_option(use_D, use_z, use_bias, softplus, layout):
    groups = None if layout == "3d" else 3
    # 150 steps: three of the backward's recompute segments, the last one partial
    inputs = make_inputs(length=150, groups_B=groups, groups_C=groups, signed_delta=softplus)
    assert inputs["u"].shape[-1] > 2 * compiled.SEGMENT
    for name, used in (("D", use_D), ("z", use_z), ("delta_bias", use_bias)):
        if not used:
            del inputs[name]
    check_against_naive(inputs, {"delta_softplus": softplus}, compiled.selective_scan_compiled)


@needs_numba
@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 128])
@pytest.mark.parametrize("groups_B,groups_C", [(None, None), (2, None), (None, 3), (2, 3), (6, 6)])
def test_compiled_scan_lengths_and_groups(length, groups_B, groups_C):
    inputs = make_inputs(length=length, groups_B=groups_B, groups_C=groups_C)
    check_against_naive(inputs, {"delta_softplus": True}, compiled.selective_scan_compiled)


@needs_numba
@pytest.mark.parametrize("dim,groups,width", [(24, 1, 5), (24, 1, 24), (16, 4, 3), (12, 2, 16), (7, 1, 2)])
def test_compiled_scan_channel_blocks(monkeypatch, dim, groups, width):
    """A task is a block of channels of one group: several blocks per group, blocks of unequal widths, one block
    per group, one channel per block."""
    monkeypatch.setattr(compiled, "WIDTH", width)
    blocks = compiled.channel_blocks(dim, groups, width)
    per_group = dim // groups
    assert blocks[0, 0] == 0 and blocks[-1, 1] == dim and (blocks[1:, 0] == blocks[:-1, 1]).all()
    assert ((blocks[:, 1] - blocks[:, 0]) <= width).all() and (blocks[:, 1] > blocks[:, 0]).all()
    assert ((blocks[:, 0] // per_group) == ((blocks[:, 1] - 1) // per_group)).all()  # never across groups
    assert len(blocks) % groups == 0
    inputs = make_inputs(batch=3, dim=dim, length=70, groups_B=groups, groups_C=groups)
    check_against_naive(inputs, {"delta_softplus": True}, compiled.selective_scan_compiled)


@needs_numba
def test_compiled_scan_float32_and_low_precision():
    inputs = make_inputs(batch=2, dim=32, n_state=16, length=300, dtype=torch.float64, signed_delta=False)
    reference, _ = naive_scan(**inputs, delta_softplus=True)
    for dtype, tol in ((torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        low = {k: v.to(dtype) for k, v in inputs.items()}
        out, last = compiled.selective_scan_compiled(**low, delta_softplus=True, return_last_state=True)
        assert out.dtype == dtype and last.dtype == torch.float32
        ref_low, _ = naive_scan(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
        torch.testing.assert_close(out.double(), ref_low, atol=tol, rtol=tol)
    leaves = {k: v.float().requires_grad_(True) for k, v in inputs.items()}
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    compiled.selective_scan_compiled(**leaves, delta_softplus=True).square().sum().backward()
    naive_scan(**ref_leaves, delta_softplus=True)[0].square().sum().backward()
    for name in leaves:
        grad, ref = leaves[name].grad.double(), ref_leaves[name].grad
        torch.testing.assert_close(grad, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-3, msg=name)
    assert torch.equal(reference, naive_scan(**inputs, delta_softplus=True)[0])


@needs_numba
def test_compiled_scan_large_decays_and_non_finite_inputs():
    g = torch.Generator().manual_seed(3)
    b, d, n, length = 2, 8, 4, 300
    u, B, C = torch.randn(b, d, length, generator=g), torch.randn(b, n, length, generator=g), \
        torch.randn(b, n, length, generator=g)
    A = -torch.rand(d, n, generator=g) * 60.0
    A[0] = -1e-3
    # log-decays of -1000 per step: the decay underflows (raised to ~1e-38), the state is just the last input
    huge = compiled.selective_scan_compiled(u, torch.full_like(u, 20.0), A - 50.0, B, C, return_last_state=True)[1]
    torch.testing.assert_close(huge, 20.0 * u[:, :, -1, None] * B[:, None, :, -1], atol=1e-4, rtol=1e-5)
    delta = torch.rand(b, d, length, generator=g) * 3.0
    out = compiled.selective_scan_compiled(u, delta, A, B, C)
    ref, _ = naive_scan(u.double(), delta.double(), A.double(), B.double(), C.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    delta[1, 2, 100] = float("nan")  # a NaN step stays visible downstream instead of vanishing
    out = compiled.selective_scan_compiled(u, delta, A, B, C)
    assert torch.isnan(out[1, 2, 100:]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[1, 3]).all()


@needs_numba
def test_compiled_exp_accuracy():
    """The kernels' vectorisable exp against NumPy's float64 exp over the whole range of each precision."""
    import numpy as np

    from asmamba.mamba import _scan_kernels as kernels

    for dtype, low, high, tol in ((np.float32, -87.0, 88.0, 4e-7), (np.float64, -708.0, 709.0, 3e-14)):
        x = np.concatenate([np.linspace(low, high, 400_001), np.linspace(-1.0, 1.0, 10_001)]).astype(dtype)
        out = np.empty_like(x)
        kernels.exp_into(x, out)
        truth = np.exp(x.astype(np.float64))
        assert np.max(np.abs(out - truth) / truth) < tol, dtype
        edges = np.array([np.nan, -np.inf, np.inf, 0.0, -1e5], dtype)
        out = np.empty_like(edges)
        kernels.exp_into(edges, out)
        assert np.isnan(out[0]) and 0 < out[1] < 1e-37 and out[2] == np.inf and out[3] == 1 and 0 < out[4] < 1e-37


@needs_numba
def test_compiled_softplus_accuracy():
    """The kernels' softplus against torch's (threshold 20) in float64, and a NaN stays NaN."""
    import numpy as np

    from asmamba.mamba import _scan_kernels as kernels

    for dtype, tol in ((np.float32, 5e-7), (np.float64, 1e-14)):
        x = np.concatenate([np.linspace(-80.0, 30.0, 200_001), np.linspace(-3.0, 3.0, 10_001)]).astype(dtype)
        out = np.empty_like(x)
        kernels.softplus_into(x, out)
        truth = torch.nn.functional.softplus(torch.from_numpy(x.astype(np.float64))).numpy()
        assert np.max(np.abs(out - truth) / truth) < tol, dtype
        nan = np.array([np.nan], dtype)
        kernels.softplus_into(nan, nan)
        assert np.isnan(nan[0])


@needs_numba
def test_public_scan_uses_compiled_kernel_on_cpu(monkeypatch):
    calls = []
    real = compiled.selective_scan_compiled
    monkeypatch.setattr(compiled, "selective_scan_compiled", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(length=9)
    out = selective_scan(**inputs, delta_softplus=True)
    assert calls == [1] and ss.backend_name("cpu") == "numba"
    torch.testing.assert_close(out, naive_scan(**inputs, delta_softplus=True)[0], atol=1e-9, rtol=0)
    monkeypatch.setattr(ss, "prefer_compiled", False)
    selective_scan(**inputs, delta_softplus=True)
    assert calls == [1] and ss.backend_name("cpu") == "pytorch"


def test_scan_falls_back_to_pytorch_without_numba(monkeypatch):
    import asmamba.mamba as package

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "asmamba.mamba._scan_kernels", raising=False)
    if hasattr(package, "_scan_kernels"):
        monkeypatch.delattr(package, "_scan_kernels")
    monkeypatch.setattr(compiled, "_checked", False)
    monkeypatch.setattr(compiled, "_kernels", None)
    with pytest.warns(RuntimeWarning, match="compiled CPU selective scan is unavailable"):
        assert not compiled.available()
    assert "numba" in compiled.unavailable_reason() and ss.backend_name("cpu") == "pytorch"
    inputs = make_inputs(length=9)
    check_against_naive(inputs, {"delta_softplus": True}, selective_scan)
    with pytest.raises(RuntimeError, match="numba is not importable"):
        compiled.selective_scan_compiled(**inputs)


def test_kernels_compile_without_a_writable_cache(tmp_path):
    """Where numba finds no writable cache folder (a read-only install and home), the kernels still compile."""
    import subprocess

    (tmp_path / "no_locator.py").write_text(
        "class NoLocator:\n"
        "    @classmethod\n"
        "    def from_function(cls, py_func, py_file):\n"
        "        return None\n"
    )
    code = (
        "import torch, numba.core.caching as c\n"
        "from asmamba.mamba import compiled_scan\n"
        "assert compiled_scan.available(), compiled_scan.unavailable_reason()\n"
        "u = torch.randn(1, 2, 5, dtype=torch.float64)\n"
        "out = compiled_scan.selective_scan_compiled(u, u.abs(), -torch.ones(2, 3, dtype=torch.float64),\n"
        "    torch.ones(1, 3, 5, dtype=torch.float64), torch.ones(1, 3, 5, dtype=torch.float64))\n"
        "print(float(out.sum()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "no_locator.NoLocator",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert math.isfinite(float(proc.stdout.strip().splitlines()[-1]))


@needs_numba
def test_compiled_scan_keeps_torchs_thread_count():
    """numba's first parallel launch starts its OpenMP pool, which set the OpenMP thread count torch shares back to
    NUMBA_NUM_THREADS: a process that asked torch for one thread then ran its reductions on two (and a training run
    stopped reproducing itself bit for bit). A fresh process, so that numba's pool is not started yet."""
    import subprocess

    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from asmamba.mamba import compiled_scan\n"
        "u = torch.randn(1, 16, 40)\n"
        "compiled_scan.selective_scan_compiled(u, u.abs(), -torch.rand(16, 4), torch.randn(1, 4, 40),\n"
        "    torch.randn(1, 4, 40))\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "1"
