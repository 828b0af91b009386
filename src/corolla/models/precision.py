"""The precisions a span can run in, by name: compute dtypes and weight quantizations.

Spelled once here, without torch, so that the server's checks (:mod:`corolla.models.loading`,
:mod:`corolla.models.quant`) and the CLI's ``--dtype`` / ``--quant`` choices use the same names.
"""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")  # torch.<name>
QUANTS = ("none", "fp16-decode", "int8", "bnb-int8", "nf4")  # see corolla.models.quant
