"""A tiny random Llama with a byte-level tokenizer, saved as a Hugging Face directory.

The CLI tests run `swiftsd generate --model DIR` through the real loader on it.
Byte-level tokens split multi-byte characters across tokens, which is what the
incremental (streaming) decoder has to cope with.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer(chat_template: bool = True):
    """256 byte tokens (GPT-2 style byte-to-unicode alphabet, no merges) plus ``<eos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model_dir(out: str | Path, chat_template: bool = True, max_positions: int = 256) -> Path:
    """A tiny Llama (no EOS: generations run to max_new_tokens) plus the byte tokenizer, in ``out``."""
    from tiny import tiny_model

    out = Path(out)
    tok = byte_tokenizer(chat_template)
    model = tiny_model("llama", seed=4, vocab_size=len(tok), max_position_embeddings=max_positions)
    model.generation_config.eos_token_id = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
