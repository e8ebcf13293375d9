"""Chat templates: a conversation rendered through a model's Jinja template, as transformers does.

Both Python-side tokenizers (`tfgen.bpe_tokenizer.BPETokenizer`,
`tfgen.sentencepiece_tokenizer.SentencePieceTokenizer`) render here, with transformers' own
renderer (its sandboxed Jinja environment, `raise_exception`, `tojson`, `strftime_now`), so a
template means what it means under `transformers`' `apply_chat_template`. transformers is
imported only when a template is rendered: loading and plain generation do not pay for it.
"""
from __future__ import annotations

from typing import Optional


def render_chat_template(chat_template: Optional[str], conversation, *, add_generation_prompt: bool = False,
                         special_tokens: Optional[dict] = None, **kwargs) -> str:
    """`conversation` (a list of {"role", "content"} messages) through `chat_template`.

    Args:
        special_tokens: names the template may read (bos_token, eos_token, ...).
        kwargs: further template variables, as `apply_chat_template` passes them.

    Raises:
        ValueError: there is no template.
    """
    if not chat_template:
        raise ValueError("this tokenizer has no chat template")
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[conversation], chat_template=chat_template,
        add_generation_prompt=add_generation_prompt, **{**(special_tokens or {}), **kwargs})
    return rendered[0]
