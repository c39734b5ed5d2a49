"""bf16 asked for on hardware that emulates it is honoured and said to cost ~35x (a study that always asked for it
took 265 s a step on an AVX2-only CPU, 6 s where bf16 is native)."""

from __future__ import annotations

import torch

from distill.precision import cpu_capability, native_bf16
from distill.recipe import _warn_if_emulated_bf16


def test_native_bf16_follows_what_torch_computes_bf16_with_here():
    if torch.cuda.is_available():
        assert native_bf16() is torch.cuda.is_bf16_supported()
    else:
        assert native_bf16() is torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if cpu_capability() in ("DEFAULT", "AVX2"):  # oneDNN's bf16 needs AVX512 at least
            assert native_bf16() is False


def test_a_recipe_with_bf16_warns_only_where_it_is_emulated(capsys):
    _warn_if_emulated_bf16()
    said = capsys.readouterr().err
    if native_bf16():
        assert said == ""
    else:
        assert f"bf16=true on hardware without native bf16 (torch's CPU kernels: {cpu_capability()})" in said
        assert "set bf16=false" in said
