"""Prompt building: chat messages through the tokenizer's template, and fill-in-the-middle."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref

from corolla.api import tools as toolfmt
from corolla.api.errors import bad_request


@dataclasses.dataclass(frozen=True)
class FimTokens:
    prefix: str
    suffix: str
    middle: str
    extra_stops: tuple[str, ...] = ()  # special tokens that end a middle (besides EOS)


# (prefix, suffix, middle, tokens that also end the middle), by family
_FIM_STYLES = (
    FimTokens("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
              ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|endoftext|>")),  # Qwen2.5-Coder
    # StarCoder
    FimTokens("<fim_prefix>", "<fim_suffix>", "<fim_middle>", ("<fim_pad>", "<file_sep>", "<|endoftext|>")),
)


_fim_found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its FimTokens or None


def fim_tokens(tokenizer) -> FimTokens | None:
    """The model's fill-in-the-middle tokens, if its vocabulary has a known set (looked up once per
    tokenizer: ``get_vocab()`` builds a dict of the whole vocabulary, ~0.1 s for Qwen's 151k)."""
    try:
        return _fim_found[tokenizer]
    except (KeyError, TypeError):  # not yet, or a tokenizer that cannot be weakly referenced
        pass
    vocab = tokenizer.get_vocab()
    found = None
    for style in _FIM_STYLES:
        if all(t in vocab for t in (style.prefix, style.suffix, style.middle)):
            found = dataclasses.replace(style, extra_stops=tuple(t for t in style.extra_stops if t in vocab))
            break
    with contextlib.suppress(TypeError):
        _fim_found[tokenizer] = found
    return found


def fim_prompt(tokenizer, prefix: str, suffix: str) -> tuple[str, FimTokens]:
    """PSM order: ``<prefix>PREFIX<suffix>SUFFIX<middle>``; a 400 when the model has no FIM tokens."""
    tokens = fim_tokens(tokenizer)
    if tokens is None:
        raise bad_request("this model has no fill-in-the-middle tokens: `suffix` is not supported",
                          param="suffix", code="unsupported_parameter")
    return f"{tokens.prefix}{prefix}{tokens.suffix}{suffix}{tokens.middle}", tokens


def template_knows_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                tool_choice: str | None = None) -> str:
    """The prompt text for ``messages`` (OpenAI dicts), ending where the assistant's reply starts.

    ``tool_choice``: None/"auto", "none", "required" or a function name. With "required" or a
    name, the reply is prefilled with the start of a call (see :func:`tools.call_prefill`).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("this model has no chat template: use /v1/completions", param="messages")
    messages = [dict(m, role="system") if m["role"] == "developer" else m for m in messages]
    use_tools = bool(tools) and tool_choice != "none"
    forced = tool_choice if use_tools and tool_choice not in (None, "auto") else None
    native = use_tools and template_knows_tools(tokenizer)
    history = toolfmt.history_for_template(messages, native=native)
    kwargs = {}
    if native:
        kwargs["tools"] = tools
        if forced:  # the template says how to call; it cannot say that a call is required
            note = toolfmt.tools_system_prompt([], forced).split("\n")[-1]
            history = _with_system_note(history, note)
    elif use_tools:
        history = _with_system_note(history, toolfmt.tools_system_prompt(tools, forced))
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True, **kwargs)
    return text + toolfmt.call_prefill(forced)


def _with_system_note(history: list[dict], note: str) -> list[dict]:
    if history and history[0]["role"] == "system":
        return [{"role": "system", "content": f"{history[0]['content']}\n\n{note}"}, *history[1:]]
    return [{"role": "system", "content": note}, *history]
