"""The codecs hidden states travel in, spelled once: wire messages (``Codec``), the encoder and decoder
(:mod:`corolla.protocol.tensors`, which says what each one is), the client's config and the CLI's
``--compression`` choices all use these. Imports nothing heavy, so the CLI can offer the choices."""

from __future__ import annotations

from typing import Literal, get_args

Codec = Literal["none", "fp16", "bf16", "int8"]
CODECS: tuple[str, ...] = get_args(Codec)
