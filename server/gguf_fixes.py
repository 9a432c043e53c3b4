"""What transformers' GGUF loader leaves out of a converted checkpoint, put back from the GGUF.

Measured on the Gemma 3 270M GGUF (transformers 5.17 and 5.19, docs/toolchain.md):
- `tokenizer.ggml.add_bos_token` is ignored: the converted tokenizer starts no text with
  <bos>, and Gemma without it is a different model (perplexity 3-9x higher on held-out text).
- A GGUF without `tokenizer.chat_template` gives a tokenizer without one, so vLLM refuses chat
  completions. For Gemma 3 the template is the one every Gemma 3 checkpoint ships.
- Gemma 3 ends a chat turn with <end_of_turn>, which is not the GGUF's eos: without it in the
  generation config a chat reply runs on until max_tokens.

Nothing here changes a model whose GGUF already carries these (SmolLM2's says add_bos false
and has its template), so its converted checkpoint stays byte for byte what it was.
"""

from __future__ import annotations

from pathlib import Path

# Gemma 3's chat template, as google/gemma-3-*-it ship it in tokenizer_config.json (the GGUF
# of the 270M base model carries none). A system message is folded into the first user turn.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""

# Plain English: any real subword tokenizer needs well under two tokens per word for it.
SAMPLE = "The quick brown fox jumps over the lazy dog near the bank of the river."


class TokenizerCheckError(ValueError):
    """The converted tokenizer does not tokenize like the model's own."""


# GGUF architecture -> (chat template when the GGUF has none, tokens that also end a reply)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemma3": (GEMMA3_CHAT_TEMPLATE, ("<end_of_turn>",)),
}


def gguf_metadata(path: Path) -> dict:
    """The few GGUF header fields the fixes need (the tensors are not read)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out = {}
    for key in ("general.architecture", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        if key in fields:
            out[key] = fields[key].contents()
    return out


def restore(model, tokenizer, metadata: dict) -> list[str]:
    """Put back what the conversion lost, in place; returns what was changed, for the record."""
    changed = []
    bos = tokenizer.bos_token_id
    wants_bos = bool(metadata.get("tokenizer.ggml.add_bos_token")) and bos is not None
    if wants_bos and tokenizer("a")["input_ids"][:1] != [bos]:
        tokenizer.add_bos_token = True  # rewrites the tokenizer's post-processor
        changed.append("add_bos_token")
    family = FAMILIES.get(str(metadata.get("general.architecture")))
    if family is None:
        return changed
    template, stop_tokens = family
    if not metadata.get("tokenizer.chat_template") and not tokenizer.chat_template:
        tokenizer.chat_template = template
        changed.append("chat_template")
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
    stop_ids = [i for i in stop_ids if i is not None and i != tokenizer.unk_token_id]
    generation = model.generation_config
    eos = generation.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    missing = [i for i in stop_ids if i not in eos]
    if missing:
        generation.eos_token_id = eos + missing
        changed.append("eos_token_id")
    return changed


def check_tokenizer(tokenizer, metadata: dict) -> None:
    """Refuse a conversion whose tokenizer cannot be the model's: transformers 5.17 turns the
    Gemma 3 GGUF's vocabulary into a Unigram model that splits text into single characters and
    knows none of the chat markers (5.19 converts it right; docs/toolchain.md)."""
    words = len(SAMPLE.split())
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    if len(ids) > 2 * words or tokenizer.decode(ids).strip() != SAMPLE:
        raise TokenizerCheckError(
            f"the converted tokenizer splits a {words}-word sentence into {len(ids)} tokens"
        )
    family = FAMILIES.get(str(metadata.get("general.architecture")))
    for marker in family[1] if family else ():
        if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) != 1:
            raise TokenizerCheckError(f"the converted tokenizer does not know {marker} as a token")
