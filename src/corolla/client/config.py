"""Configuration of a client; ``from_pretrained`` keyword arguments map onto this."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    initial_peers: tuple[str, ...] = ()
    model_id: str | None = None  # DHT prefix; default: the model's name
    allowed_servers: frozenset[str] | None = None  # restrict routing to these peer ids
    request_timeout_s: float = 60.0  # one step or forward call through one server (alive but stuck)
    connect_timeout_s: float = 5.0  # opening a session stream to a server
    liveness_period_s: float = 1.0  # a server whose answer is this late is probed, and again every period ...
    liveness_timeout_s: float = 2.0  # ... and given up when a probe takes longer (see SwarmClient.answer_of)
    route_timeout_s: float = 30.0  # how long to wait for missing blocks to get a server
    max_chunk_tokens: int = 1024  # prefill is sent in chunks of at most this many tokens (x batch)
    # through servers that push, a prompt goes as at least this many pieces of at least
    # pipeline_min_tokens tokens, all sent at once, so that the servers compute them at the same time.
    # Each piece costs every server a pass over its weights and a step's overheads: on a CPU, pieces
    # under ~64 tokens made time to first token slower, not faster (23 tokens: 1.80x local in 4
    # pieces of 8, 1.13x in one; 512 tokens: 1.47x in one piece, 0.92-1.00x in 4)
    pipeline_chunks: int = 4
    pipeline_min_tokens: int = 64
    max_train_tokens: int = 1024  # training calls carry at most this many tokens (whole rows, at least one)
    # a training forward keeps its graph on each server until its backward (one stream per hop and
    # micro-batch) instead of the server recomputing it; False: stateless forward + backward calls
    train_streams: bool = True
    train_pipeline: int = 4  # a training batch goes as at least this many micro-batches at once (rows permitting)
    adapter: str | None = None  # a LoRA adapter servers host (by name): only servers announcing it are used
    max_retries: int = 5  # failed steps re-routed before giving up
    ban_s: float = 15.0  # first ban of a failing server; doubles on repeat
    compression: str = "none"  # hidden states on the wire: one of protocol.codecs.CODECS (see protocol.tensors)
    push: bool = True  # servers push each step's output straight to the next server (see InferenceSession)
    cohort_wait_s: float = 0.01  # the LM head waits up to this long for the rest of a cohort (see HeadBatcher)
    state_max_age_s: float = 5.0  # new sessions reuse a DHT read this recent (a failure re-reads at once)
    # ... and one up to this old while a fresh read goes on in the background (a DHT read costs a
    # new session ~50 ms of its time to first token; a route that is gone fails over as usual)
    state_stale_s: float = 60.0
    # verified computation (corolla.client.verify): this share of inference steps re-checks every
    # hop's outputs so far on a second server (0: never); seed: the sample (None: random)
    verify_rate: float = 0.05
    verify_seed: int | None = None
    # the LM head keeps a float16 copy of its weights for decode steps (one or two rows): about twice as
    # fast on CPU, half the head's memory more, logits rounded to float16 (see models.step.half_rows_matmul)
    head_fp16_decode: bool = False
    report_wrong: bool = True  # publish a signed DHT report about a server found wrong
    weigh_reports: bool = True  # use a server other clients reported only when no other can serve

    def __post_init__(self):
        from corolla.protocol.codecs import CODECS

        if not 0.0 <= self.verify_rate <= 1.0:
            raise ValueError(f"verify_rate must be within 0..1, not {self.verify_rate!r}")
        if self.compression not in CODECS:
            raise ValueError(f"compression must be one of {', '.join(CODECS)}, not {self.compression!r}")
