"""Typed wire messages.

All models are frozen and forbid extra fields: anything a peer sends is parsed here before use,
and a value that does not parse is a :class:`~corolla.errors.BadRequestError`, never an assert.
Metadata travels as msgpack (never pickle).
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corolla.errors import BadRequestError
from corolla.protocol.codecs import Codec

PROTOCOL_VERSION = 1
MAX_META_BYTES = 64 * 1024

# a model's key in the swarm: its name, and the digest of its weights' manifest (corolla.models.manifest)
ModelId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*(@[0-9a-f]{16})?$")]
StepNumber = Annotated[int, Field(ge=0, le=2**62)]
SessionId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
BlockIndex = Annotated[int, Field(ge=0, le=100_000)]
PeerIdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")]  # base58


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# projections of a block that LoRA may adapt, in the order their tensors travel
# (qkv and gate_up: the fused projections of Phi-3, BLOOM and Falcon; a family has the ones its blocks have)
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up")
LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up"]
AdapterName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]


class AdapterSpec(_Wire):
    """Trainable tensors a client sends with a request (or a session's first message) for the
    blocks of that request, after the hidden states (and, for backward, their gradient).

    Per block, in block order: its deep prompt ``[1 or batch, prompt_len, hidden]`` when
    ``prompt_len`` > 0 (added to the first ``prompt_len`` positions before the block), then for
    each of ``lora_targets`` in :data:`LORA_TARGETS` order its LoRA ``A [rank, in]`` and
    ``B [out, rank]`` (the projection's output grows by ``lora_scale * x @ A.T @ B.T``). Float32.
    The server keeps none of them after the request (or the session).
    """

    prompt_len: int = Field(default=0, ge=0, le=65_536)
    lora_rank: int = Field(default=0, ge=0, le=65_536)
    lora_scale: float = Field(default=1.0, ge=-1e6, le=1e6, allow_inf_nan=False)
    lora_targets: tuple[LoraTarget, ...] = Field(default=(), max_length=len(LORA_TARGETS))

    @model_validator(mode="after")
    def _consistent(self) -> AdapterSpec:
        if bool(self.lora_rank) != bool(self.lora_targets):
            raise ValueError("lora_rank and lora_targets go together (both set or both empty)")
        if list(self.lora_targets) != [t for t in LORA_TARGETS if t in self.lora_targets]:
            raise ValueError(f"lora_targets must be distinct and in the order {', '.join(LORA_TARGETS)}")
        if not self.prompt_len and not self.lora_rank:
            raise ValueError("an adapter spec without prompts or LoRA: leave it out")
        return self

    @property
    def tensors_per_block(self) -> int:
        return (1 if self.prompt_len else 0) + 2 * len(self.lora_targets)


class ServerState(str, enum.Enum):
    JOINING = "joining"
    ONLINE = "online"
    OFFLINE = "offline"


class ServerInfo(_Wire):
    """What a server announces in the DHT for each block it serves (one record per block)."""

    state: ServerState
    start_block: BlockIndex
    end_block: BlockIndex
    version: str = Field(max_length=32)
    protocol: int = PROTOCOL_VERSION
    dtype: str = Field(max_length=16)
    quant: str = Field(default="none", max_length=16)
    # decode steps per second through the whole span (one token), and prefill tokens per second
    inference_rps: float = Field(ge=0.0)
    forward_tps: float = Field(ge=0.0)
    cache_tokens_left: int = Field(ge=0)
    active_sessions: int = Field(default=0, ge=0)
    queued_requests: int = Field(default=0, ge=0)  # requests waiting for or in computation
    steps_served: int = Field(default=0, ge=0)  # inference steps computed since start ...
    batches_run: int = Field(default=0, ge=0)  # ... in this many batched forwards
    public_name: str | None = Field(default=None, max_length=64)
    adapters: tuple[AdapterName, ...] = Field(default=(), max_length=64)  # server-hosted LoRA adapters, by name
    trainable: bool = True  # answers backward calls (float weights; a quantized span cannot)
    max_backward_tokens: int = Field(default=2048, ge=1)  # batch x tokens of one backward call
    max_session_length: int = Field(default=8192, ge=1)  # positions one inference session may reach
    # bytes of the span's weights as loaded (measured; from the checkpoint's headers while joining)
    weight_bytes: int = Field(default=0, ge=0, le=2**50)
    # round-trip times (seconds) to the servers holding the following blocks, by peer id
    next_pings: dict[Annotated[str, Field(max_length=64)], float] = Field(default_factory=dict, max_length=64)

    # the multiaddrs the server's p2p daemon says others reach it at (for people reading `swarm status`:
    # clients dial by peer id); behind NAT with a relay, only relayed ones (.../p2p-circuit/...)
    addrs: tuple[Annotated[str, Field(max_length=256)], ...] = Field(default=(), max_length=16)
    # each served block's hash (16 hex digits, :mod:`corolla.models.manifest`): a client routes only
    # through servers whose blocks hash as its own model's do
    block_hashes: tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")], ...] = Field(default=(), max_length=4096)

    @model_validator(mode="after")
    def _span_not_empty(self) -> ServerInfo:
        if self.end_block <= self.start_block:
            raise ValueError(f"empty span {self.start_block}:{self.end_block}")
        if self.block_hashes and len(self.block_hashes) != self.end_block - self.start_block:
            raise ValueError(f"{len(self.block_hashes)} block hashes for the span {self.start_block}:{self.end_block}")
        return self

    @property
    def relayed(self) -> bool:
        """Reached through a relay (``corolla server --use-relay``): it announces /p2p-circuit addresses."""
        return any("/p2p-circuit" in addr for addr in self.addrs)


MODELS_KEY = "corolla.models"  # the DHT key that lists every model of a swarm (never a block key: no integer suffix)
MAX_MODEL_BLOCKS = 4096  # far more blocks than any model has; bounds what one record may make a reader fetch


class ModelRecord(_Wire):
    """What a server announces under :data:`MODELS_KEY`, with its peer id as subkey, next to its
    block records (same expiration, re-announced with them): the swarm's list of models, so that
    a reader can find every model without a central registry and knows how many blocks each has
    (to read their block records and compute coverage)."""

    model_id: ModelId
    num_blocks: int = Field(ge=1, le=MAX_MODEL_BLOCKS)


class SessionOpen(_Wire):
    """Sent in the first message of an inference stream."""

    model_id: ModelId
    session_id: SessionId
    start_block: BlockIndex
    end_block: BlockIndex
    max_length: int = Field(ge=1, le=1_000_000)
    adapter: AdapterSpec | None = None  # client-owned adapter tensors follow this message's hidden states
    hosted_adapter: AdapterName | None = None  # or one the server hosts (ServerInfo.adapters)

    @model_validator(mode="after")
    def _span_not_empty(self) -> SessionOpen:
        if self.end_block <= self.start_block:
            raise ValueError(f"empty span {self.start_block}:{self.end_block}")
        return self


class PushTarget(_Wire):
    peer_id: PeerIdStr
    session_id: SessionId


class Cohort(_Wire):
    """Steps that left one batch together for the same receiver.

    The receiver may wait briefly until all ``size`` of them have arrived and compute them as
    one batch, so that concurrent sessions stay in step along the chain instead of trickling
    through it in small batches. Only a hint: nothing breaks when members never come.
    """

    id: str = Field(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")
    size: int = Field(ge=2, le=4096)


class InferenceMeta(_Wire):
    """Metadata of one step of an inference stream.

    ``position`` is the number of tokens the client believes the session already holds; the
    server refuses a step whose position disagrees with its cache (a desynchronised client).
    """

    position: int = Field(ge=0)
    open: SessionOpen | None = None
    # server-to-server push: after this step, send the output straight on to the first of these
    # sessions (the next hops, in order), which passes it on to the rest; the client need not
    # relay it, saving a round trip per hop ...
    route: tuple[PushTarget, ...] | None = Field(default=None, max_length=64)
    # ... and accept pushed inputs for this session only from this peer (the previous hop)
    push_from: PeerIdStr | None = None
    compression: Codec | None = None  # how this step's tensors travel, and how the answer should
    cohort: Cohort | None = None
    # roll the session back before this step: its length becomes ``truncate_to`` (keys and values
    # past it are dropped; speculative decoding rejects drafted tokens so). Must be at most the
    # session's length, and ``position`` must equal it. Pushed on with the step, so every hop rolls back
    truncate_to: int | None = Field(default=None, ge=0)
    # the client's number for this step of its session, the same on every hop and for a copy it
    # sends again (a push it was told failed, a retry after failover); it lets a server answer each
    # step once, whichever copy (pushed or sent) arrives first, and lets the client match a late
    # push failure to its step. Without it, the server acknowledges a push before answering.
    step: StepNumber | None = None
    # the message only opens the session (``open``, no tensors, position 0) and is not answered
    # unless it fails: the client opens every hop at once, before the first step reaches them by push
    open_only: bool | None = None

    @model_validator(mode="after")
    def _truncate_at_position(self) -> InferenceMeta:
        _check_truncate(self.truncate_to, self.position)
        if self.open_only and (self.open is None or self.open.adapter is not None or self.position
                               or self.route or self.truncate_to is not None or self.step is not None):
            raise ValueError("an open_only message carries `open` (without a client-owned adapter, whose tensors "
                             "travel with the first step) and `push_from`, at position 0, and nothing else")
        return self


def _check_truncate(truncate_to: int | None, position: int) -> None:
    if truncate_to is not None and truncate_to != position:
        raise ValueError(f"truncate_to {truncate_to} must equal the step's position {position}")


class PushMeta(_Wire):
    """Metadata of ``rpc_push``: a previous hop's output, the input of ``session_id``'s step at ``position``."""

    session_id: SessionId
    position: int = Field(ge=0)
    route: tuple[PushTarget, ...] | None = Field(default=None, max_length=64)  # where the receiver pushes on
    compression: Codec | None = None
    cohort: Cohort | None = None
    truncate_to: int | None = Field(default=None, ge=0)  # as in InferenceMeta: the step rolls the session back
    step: StepNumber | None = None  # the client's step number (InferenceMeta.step)

    @model_validator(mode="after")
    def _truncate_at_position(self) -> PushMeta:
        _check_truncate(self.truncate_to, self.position)
        return self


class ForwardMeta(_Wire):
    """Metadata of a stateless forward call through blocks ``start_block:end_block``.

    Tensors: the hidden states [B, T, H] (in ``compression``), then the adapter's (``adapter``).
    """

    model_id: ModelId
    start_block: BlockIndex
    end_block: BlockIndex
    compression: Codec | None = None
    adapter: AdapterSpec | None = None
    hosted_adapter: AdapterName | None = None


class BackwardMeta(ForwardMeta):
    """Metadata of a stateless backward call: tensors are the span's input hidden states, the
    gradient of its output (both in ``compression``), then the adapter's tensors. The answer holds
    the gradient of the input, then one per adapter tensor, in the same order (float32)."""


class ErrorInfo(_Wire):
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)


class ResponseMeta(_Wire):
    error: ErrorInfo | None = None
    position: int | None = None
    pushed: bool = False  # the next hop took this output from us: the client need not send it
    # the push this step asked for did not happen: the next hop refused it (its error), or the
    # connection to it failed (code RemoteCallError); the client sends the step itself
    push_error: ErrorInfo | None = None
    cohort: Cohort | None = None  # the other outputs of this step's batch that went to the same client
    step: StepNumber | None = None  # the step this answers (InferenceMeta.step), when the client numbered it
    # a late word, no tensors: the push of step ``step`` failed (``push_error``) after this server
    # had answered it with ``pushed`` (it answers once the push is sent, not acknowledged)
    notice: bool = False


M = TypeVar("M", bound=BaseModel)


def encode_meta(meta: BaseModel) -> bytes:
    return msgpack.packb(meta.model_dump(mode="json", exclude_none=True), use_bin_type=True)


def decode_meta(data: bytes, model: type[M]) -> M:
    """Parse msgpack metadata into ``model``; any problem is a BadRequestError."""
    if len(data) > MAX_META_BYTES:
        raise BadRequestError(f"metadata is {len(data)} bytes, more than the limit of {MAX_META_BYTES}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True) if data else {}
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise BadRequestError(f"metadata is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise BadRequestError(f"metadata must be a map, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise BadRequestError(f"invalid {model.__name__}: {_short(e)}") from None


def _short(e: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()[:5]]
    return "; ".join(parts)


class WrongComputationReport(_Wire):
    """A client's word, signed (stored under its own peer id), that servers of a model returned
    activations two other servers disagreed with (:mod:`corolla.client.verify`); others weigh it."""

    accused: tuple[PeerIdStr, ...] = Field(min_length=1, max_length=64)
    reported_at: float = Field(ge=0.0)


def reports_key(model_id: str) -> str:
    """The DHT key of the reports about ``model_id``'s servers (one record per reporting client)."""
    return f"corolla.reports.{model_id}"


def block_key(model_id: str, block: int) -> str:
    """The DHT key under which servers of ``block`` of ``model_id`` announce themselves."""
    return f"{model_id}.{block}"
