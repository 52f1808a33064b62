"""The allocator settings: applied on glibc, switched off by the environment, harmless to the results."""

import platform

import pytest
import torch

from asmamba.allocator import tune_cpu_allocator, tune_from_environment


def test_environment_switch_turns_tuning_off(monkeypatch):
    monkeypatch.setenv("ASMAMBA_TUNE_MALLOC", "0")
    assert tune_from_environment() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuning_takes_effect_on_glibc_and_keeps_results():
    torch.manual_seed(0)
    a, b = torch.randn(300, 200), torch.randn(200, 100)
    before = a @ b
    assert tune_cpu_allocator() is True
    big = torch.empty(64 * 2**20 // 4)  # a block above the mmap threshold still allocates and frees
    del big
    assert torch.equal(a @ b, before)
