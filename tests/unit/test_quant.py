"""Precision choices are checked before anything loads, with messages that say what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from corolla.errors import ModelError
from corolla.models.quant import check_dtype, check_quant, quantize_span
from corolla.models.step import linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_this_cpu_runs_every_offered_dtype(dtype):
    check_dtype(dtype)


@pytest.mark.parametrize("quant", ["int8", "fp16-decode"])
def test_int8_and_fp16_decode_need_float32_weights(quant):
    with pytest.raises(ModelError, match="--dtype float32"):
        check_quant(quant, torch.bfloat16)
    check_quant(quant, torch.float32)


@pytest.mark.parametrize("quant", ["bnb-int8", "nf4"])
def test_bitsandbytes_modes_are_refused_on_cpu(quant):
    with pytest.raises(ModelError, match="CUDA"):
        check_quant(quant, torch.float32)


def test_unknown_quantization_is_named():
    with pytest.raises(ModelError, match="int4.*none, fp16-decode, int8"):
        check_quant("int4", torch.float32)


def test_int8_replaces_every_linear_and_stays_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
    x = torch.randn(3, 64)
    expected = model(x)
    quantized = quantize_span(model, "int8", torch.float32)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    got = quantized(x)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9])
def test_fast_small_batch_linear_is_the_same_math(rows):
    torch.manual_seed(rows)
    layer = nn.Linear(64, 96, bias=True)
    x = torch.randn(rows, 64)
    assert torch.allclose(linear(layer, x), layer(x), atol=1e-5)
    assert linear(layer, x).is_contiguous()


def test_the_cli_offers_the_precisions_and_policies_the_server_knows():
    """`corolla server` / `swarm up` choices are the definitions, not copies of them."""
    import argparse

    from corolla.cli import server as server_cli
    from corolla.cli import swarm as swarm_cli
    from corolla.models.loading import parse_dtype
    from corolla.models.precision import DTYPES, QUANTS
    from corolla.server.config import CACHE_POLICIES

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    server_cli.register(sub)
    swarm_cli.register(sub)
    choices = {}
    for action in parser._subparsers._group_actions[0].choices["server"]._actions:
        choices[action.dest] = action.choices
    assert (choices["dtype"], choices["quant"], choices["cache_policy"]) == (DTYPES, QUANTS, CACHE_POLICIES)
    up = parser._subparsers._group_actions[0].choices["swarm"]._subparsers._group_actions[0].choices["up"]
    assert next(a.choices for a in up._actions if a.dest == "dtype") == DTYPES
    assert [parse_dtype(name) for name in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]


def test_fp16_decode_copies_serve_one_or_two_rows_and_float32_the_rest():
    from corolla.models.step import HALF_ROWS, SpanLinear

    torch.manual_seed(0)
    layer = SpanLinear(64, 96)
    span = quantize_span(nn.Sequential(layer), "fp16-decode", torch.float32)
    assert span[0] is layer and layer.weight.dtype == torch.float32 and layer.weight16.dtype == torch.float16
    for rows in (1, HALF_ROWS, HALF_ROWS + 1, 40):
        x = torch.randn(rows, 64)
        exact = nn.functional.linear(x, layer.weight, layer.bias)
        got = linear(layer, x)
        assert got.dtype == torch.float32 and (got - exact).abs().max() < 1e-2 * exact.abs().max()
        if rows <= HALF_ROWS:  # the float16 copy: rounded
            assert not torch.equal(got, exact)
        else:
            assert torch.allclose(got, exact, atol=1e-5)


def test_fp16_decode_falls_back_to_float32_where_float16_would_overflow():
    """An outlier activation past float16's range (65504) must not come out as inf or NaN."""
    from corolla.models.step import SpanLinear

    torch.manual_seed(0)
    layer = SpanLinear(8, 4)
    with torch.no_grad():
        layer.weight[0].fill_(0.5)  # the first output of a row of 6e4s: 2.4e5
    quantize_span(nn.Sequential(layer), "fp16-decode", torch.float32)
    # an input past the range; an input within it whose output is past it (one and two rows)
    for x in (torch.full((1, 8), 1e5), torch.full((1, 8), 6e4), torch.full((2, 8), 6e4)):
        exact = nn.functional.linear(x, layer.weight, layer.bias)
        got = linear(layer, x)
        assert torch.isfinite(got).all() and torch.allclose(got, exact, rtol=1e-5, atol=1e-2)
    small = torch.randn(1, 8)  # in range: still the float16 copy (rounded)
    assert not torch.equal(linear(layer, small), nn.functional.linear(small, layer.weight, layer.bias))
