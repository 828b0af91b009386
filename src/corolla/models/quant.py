"""Server precisions: compute dtype checks and weight quantization of a loaded span.

- ``--dtype float32 | bfloat16 | float16``: refused with a clear message where this machine
  cannot run it (checked by running a small matmul in that dtype);
- ``--quant fp16-decode``: a float32 span whose linear layers also keep a float16 copy of their
  weights, used by decode steps of one or two rows (about twice as fast here: half the bytes read
  per token); longer steps use the float32 weights. The weights take 1.5x the memory
  (see :func:`corolla.models.step.half_rows_matmul`);
- ``--quant int8`` (CPU): PyTorch dynamic quantization of every Linear layer (int8 weights,
  activations quantized on the fly), on a float32 span;
- ``--quant bnb-int8 | nf4``: bitsandbytes 8-bit / 4-bit NormalFloat, only with a CUDA device
  and bitsandbytes installed; refused otherwise.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from corolla.errors import ModelError
from corolla.models.precision import QUANTS
from corolla.models.step import SpanLinear, lora


def check_dtype(dtype: torch.dtype, device: str = "cpu") -> None:
    """Raise ModelError if ``device`` cannot multiply matrices in ``dtype``."""
    try:
        a = torch.ones(4, 4, dtype=dtype, device=device)
        (a @ a).sum().item()
    except Exception as e:
        raise ModelError(f"this machine ({device}) cannot compute in {dtype}: {type(e).__name__}: {e}; "
                         "use --dtype float32") from None


def check_quant(quant: str, dtype: torch.dtype, device: str = "cpu") -> None:
    """Raise ModelError if ``quant`` cannot run here with ``dtype`` (before anything is loaded)."""
    if quant == "none":
        return
    if quant == "fp16-decode":
        if dtype != torch.float32:
            raise ModelError(f"--quant fp16-decode adds float16 copies to a float32 span; use --dtype float32 "
                             f"(not {dtype})")
        check_dtype(torch.float16, device)
        return
    if quant == "int8":
        if device != "cpu":
            raise ModelError("--quant int8 is PyTorch's CPU dynamic quantization; on CUDA use --quant bnb-int8 or nf4")
        if dtype != torch.float32:
            raise ModelError(f"--quant int8 quantizes float32 weights; use --dtype float32 (not {dtype})")
        return
    if quant in ("bnb-int8", "nf4"):
        if not torch.cuda.is_available() or device == "cpu":
            raise ModelError(f"--quant {quant} needs a CUDA device (bitsandbytes); on CPU use --quant int8")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError(f"--quant {quant} needs bitsandbytes: pip install bitsandbytes")
        raise ModelError(f"--quant {quant}: corolla servers run on CPU in this version; CUDA serving comes later")
    raise ModelError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")


def quantize_span(span: nn.Module, quant: str, dtype: torch.dtype, device: str = "cpu") -> nn.Module:
    """Apply ``quant`` to the span's Linear layers (in place); return the span."""
    check_quant(quant, dtype, device)
    if quant == "fp16-decode":
        for layer in span.modules():
            if isinstance(layer, SpanLinear):  # step.linear uses the copy for decode-sized steps
                layer.weight16 = layer.weight.detach().to(torch.float16)
    if quant == "int8":
        parents = [(parent, name, child) for parent in span.modules() for name, child in parent.named_children()
                   if isinstance(child, nn.Linear)]
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            for parent, name, child in parents:
                key = getattr(child, "lora_key", None)
                child.__class__ = nn.Linear  # a SpanLinear: the converter takes only plain Linear layers
                child.qconfig = torch.ao.quantization.default_dynamic_qconfig
                quantized = DynamicLinear.from_float(child)
                quantized.__class__ = QuantizedSpanLinear
                quantized.lora_key = key
                setattr(parent, name, quantized)
    return span


class QuantizedSpanLinear(DynamicLinear):
    """An int8 linear layer of a span that still adds the step's LoRA (hosted adapters)."""

    lora_key: tuple[int, str] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = lora(super().forward(rows), rows, self.lora_key)
        return out.view(*x.shape[:-1], out.shape[-1])
