"""Pure mechanics, no policy: model adapters, the slot KV cache, trees, verification, costs.

Nothing here imports from the rest of swiftsd except ``config`` and ``errors``.
"""
