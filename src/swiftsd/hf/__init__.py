"""The transformers edge: ``custom_generate``, generate-style options, stopping, prompts, EOS ids,
incremental detokenisation. Everything here speaks Hugging Face's vocabulary so the core need not."""
