"""Time the PyTorch selective scan against the naive step-by-step loop (forward, and forward + backward).

    python benchmarks/bench_selective_scan.py                       # batch 1, dim 512, N 16, L 9600, 2 threads
    python benchmarks/bench_selective_scan.py --threads 1 --naive-length 2400

The naive loop is linear in L, so ``--naive-length`` may time it on a prefix and scale the time to the full length
(the report says so). Both use the same inputs: random u, softplus(delta + bias), A = -exp(N(0, 1)), B, C, D, z.
Times are the best of ``--repeats`` runs (wall clock; the machine may be shared).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from asmamba.mamba.selective_scan import choose_blocking, selective_scan_pytorch, selective_scan_reference


def make_inputs(batch: int, dim: int, n_state: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 scan inputs of a realistic scale (delta + bias around softplus^-1 of 0.01..0.1)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g),
        "A": -torch.exp(torch.randn(dim, n_state, generator=g)),
        "B": torch.randn(batch, n_state, length, generator=g),
        "C": torch.randn(batch, n_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.log(torch.expm1(torch.empty(dim).uniform_(0.01, 0.1, generator=g))),
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_scan(scan: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], repeats: int) -> tuple[float, float]:
    """(forward seconds, forward + backward seconds) of ``scan`` on ``inputs``."""
    def forward() -> torch.Tensor:
        return scan(**inputs, delta_softplus=True)

    with torch.no_grad():
        t_forward = best_time(forward, repeats)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}

    def forward_backward() -> None:
        scan(**leaves, delta_softplus=True).sum().backward()

    t_both = best_time(forward_backward, repeats)
    return t_forward, t_both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=9600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1)
    parser.add_argument("--naive-length", type=int, default=None, help="time the naive loop on this prefix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    inputs = make_inputs(args.batch, args.dim, args.state, args.length)
    naive_length = min(args.naive_length or args.length, args.length)
    naive_inputs = {k: (v[..., :naive_length] if v.dim() == 3 else v) for k, v in inputs.items()}
    scale = args.length / naive_length

    with torch.no_grad():
        fast_out = selective_scan_pytorch(**naive_inputs, delta_softplus=True)
        naive_out = selective_scan_reference(**naive_inputs, delta_softplus=True)
    max_diff = (fast_out - naive_out).abs().max().item()

    fast_f, fast_fb = time_scan(selective_scan_pytorch, inputs, args.repeats)
    naive_f, naive_fb = time_scan(selective_scan_reference, naive_inputs, args.naive_repeats)
    naive_f, naive_fb = naive_f * scale, naive_fb * scale

    chunk_len, chunks = choose_blocking(args.length, args.batch * args.dim * args.state)
    print(f"torch {torch.__version__}, {args.threads} thread(s); batch {args.batch}, dim {args.dim}, "
          f"N {args.state}, L {args.length}, float32; blocking: chunk_len {chunk_len} x {chunks} chunks per block")
    if scale != 1:
        print(f"naive loop timed on L={naive_length} and scaled x{scale:.2f} (it is linear in L)")
    print(f"max |fast - naive| on the timed prefix: {max_diff:.2e}")
    print(f"{'':18s}{'naive (s)':>12s}{'chunked (s)':>14s}{'speed-up':>10s}")
    for name, naive, fast in (("forward", naive_f, fast_f), ("forward+backward", naive_fb, fast_fb)):
        print(f"{name:18s}{naive:12.3f}{fast:14.3f}{naive / fast:9.1f}x")


if __name__ == "__main__":
    main()
