"""A small ChatML tokenizer built at test time, so the scripted-model tests need no model files.

:func:`chatml_tokenizer` trains a byte-level BPE (the ``tokenizers`` library, a few hundred merges
on :data:`CORPUS`, well under a second) and wraps it in transformers' fast tokenizer, so the API's
real code paths run on it: ``tokenizer(text)``, ``decode``, ``get_vocab`` and
``apply_chat_template`` (transformers' own Jinja renderer). Byte-level BPE encodes any text and
decodes it back byte for byte; the special tokens are single tokens, as in a real model.

Two flavours, like the two real models the slow tests use:

* ``tools=True, fim=True``: like Qwen2.5-Coder, its template knows ``tools`` (described in the
  system turn, calls written as ``<tool_call>`` JSON, results sent back in a user turn inside
  ``<tool_response>``) and its vocabulary has the fill-in-the-middle tokens;
* ``tools=False, fim=False``: like SmolLM2, a plain ChatML template (the API then describes tools
  in the system prompt itself) and no fill-in-the-middle tokens.

The templates are written here (ChatML, the format both real models use); nothing is fetched.
"""

from __future__ import annotations

import functools

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
VOCAB_SIZE = 1024
DEFAULT_SYSTEM = "You are a helpful coding assistant."

# ChatML; with tools, the same conventions as Qwen2.5's template (which corolla.api.tools parses back)
TOOLS_TEMPLATE = """\
{%- if messages and messages[0].role == "system" -%}
    {%- set system = messages[0].content -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set system = "%(system)s" -%}
    {%- set turns = messages -%}
{%- endif -%}
{{- "<|im_start|>system\\n" + system -}}
{%- if tools -%}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n" -}}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" -}}
    {%- for tool in tools -%}
        {{- "\\n" + (tool | tojson) -}}
    {%- endfor -%}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within " -}}
    {{- "<tool_call></tool_call> XML tags:\\n<tool_call>\\n" -}}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>' -}}
{%- endif -%}
{{- "<|im_end|>\\n" -}}
{%- for message in turns -%}
    {%- if message.role == "tool" -%}
        {%- if loop.first or turns[loop.index0 - 1].role != "tool" -%}
            {{- "<|im_start|>user" -}}
        {%- endif -%}
        {{- "\\n<tool_response>\\n" + message.content + "\\n</tool_response>" -}}
        {%- if loop.last or turns[loop.index0 + 1].role != "tool" -%}
            {{- "<|im_end|>\\n" -}}
        {%- endif -%}
    {%- elif message.role == "assistant" and message.tool_calls -%}
        {{- "<|im_start|>assistant" -}}
        {%- if message.content -%}
            {{- "\\n" + message.content -}}
        {%- endif -%}
        {%- for call in message.tool_calls -%}
            {%- set function = call.function if call.function is defined else call -%}
            {{- '\\n<tool_call>\\n{"name": "' + function.name + '", "arguments": ' -}}
            {{- (function.arguments | tojson) + "}\\n</tool_call>" -}}
        {%- endfor -%}
        {{- "<|im_end|>\\n" -}}
    {%- else -%}
        {{- "<|im_start|>" + message.role + "\\n" + message.content + "<|im_end|>\\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\\n" -}}
{%- endif -%}
""".replace("%(system)s", DEFAULT_SYSTEM)

# plain ChatML: the word the API looks for to pass tools natively appears nowhere in it
PLAIN_TEMPLATE = """\
{%- for message in messages -%}
    {%- if loop.first and message.role != "system" -%}
        {{- "<|im_start|>system\\n%(system)s<|im_end|>\\n" -}}
    {%- endif -%}
    {{- "<|im_start|>" + message.role + "\\n" + message.content + "<|im_end|>\\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\\n" -}}
{%- endif -%}
""".replace("%(system)s", DEFAULT_SYSTEM)

# what the merges are learnt from: English about code, and Python (any text still encodes, byte by byte)
CORPUS = '''\
You are a helpful coding assistant. Explain the code, fix the bug, write the tests, review the change.
The user asks a question about the selected lines of a file in the project; the assistant answers it.
Here is the file calc.py with the function mean, which fails on an empty list. Raise ValueError for
bad input. Reply with the whole block in a fenced code block, or with SEARCH/REPLACE blocks.
Sure. It sums the values and divides by their number. Because the list is empty, the division fails.
The tests pass. The tests fail: one failed, two passed. Run the command and read the output.
# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
For each function call, return a json object with function name and arguments within
<tool_call></tool_call> XML tags. The result of the call comes back as a tool response.
{"type": "function", "function": {"name": "read_file", "description": "Read a file of the workspace",
"parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
{"name": "edit", "arguments": {"path": "calc.py", "search": "return a + b", "replace": "return a - b"}}
{"name": "run_tests", "arguments": {}} {"name": "list_files", "arguments": {"path": "."}}

def add(a, b):
    return a + b


def mean(values):
    """The arithmetic mean of ``values``; raises ValueError when there are none."""
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / len(values)


class Greeter:
    def __init__(self, name: str = "world") -> None:
        self.name = name

    def greet(self) -> str:
        return f"Hello, {self.name}!"


import pytest

from calc import add, mean


def test_add():
    assert add(2, 3) == 5


def test_mean_of_empty_list_raises():
    with pytest.raises(ValueError):
        mean([])


for index, value in enumerate(items):
    if value is None:
        continue
    result.append(str(value).strip())
print("done", len(result))
function add(a, b) { return a + b; }
const values = [1, 2, 3]; console.log(values.map((v) => v * 2));
'''


@functools.lru_cache(maxsize=4)
def chatml_tokenizer(tools: bool = True, fim: bool = True):
    """A transformers fast tokenizer with ChatML special tokens (see the module's docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [ENDOFTEXT, IM_START, IM_END, *(FIM_TOKENS if fim else ())]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None,
        additional_special_tokens=specials[3:] or None, clean_up_tokenization_spaces=False,
        chat_template=TOOLS_TEMPLATE if tools else PLAIN_TEMPLATE)
