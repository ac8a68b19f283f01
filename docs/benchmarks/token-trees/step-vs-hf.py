"""Our forward against transformers' own at a long context: the prefill, one token, and one verification of Q tokens.

    python docs/benchmarks/token-trees/step-vs-hf.py MODEL PROMPT_ID   (one thread; pin a quiet core)

Both run the same weights from the same process, interleaved in rounds, medians printed: the swiftsd
adapter (mask-free prefill, an 11-node causal block on a SlotKVCache) and ``model(...)`` with a
DynamicCache (the path HF prompt lookup and plain ``generate`` take: an all-ones 2-D attention mask,
which transformers may drop for a single query). Results: step-vs-hf.md.
"""
import sys
import time

import torch
from swiftsd.loading import load
from swiftsd.bench.data import build_input, load_prompts
from swiftsd.engine.models import get_adapter
from swiftsd.engine.cache import SlotKVCache
from transformers import DynamicCache
torch.set_num_threads(1)
model, tok = load(sys.argv[1], dtype="bfloat16", device="cpu")
ps = {p.id: p for p in load_prompts("/work/shared/data/spec_bench/question.jsonl", None, 3)}
ids = torch.tensor(build_input(tok, ps[sys.argv[2]], 0, [])); P = ids.numel()
ad = get_adapter(model); Q = 11
def t(f, n=5):
    f(); xs=[]
    for _ in range(n):
        a=time.perf_counter(); f(); xs.append(time.perf_counter()-a)
    xs.sort(); return 1000*xs[len(xs)//2]
with torch.inference_mode():
    sc = SlotKVCache(ad.num_layers, P + 40)
    def ours_prefill():
        sc.rollback(0); ad.forward(ids, torch.arange(P), cache=sc, logits_rows=slice(P-1, P))
    def hf_prefill():
        model(input_ids=ids[None], past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    for r in range(2):
        print("prefill P=%d ours %.0f ms  hf %.0f ms" % (P, t(ours_prefill, 3), t(hf_prefill, 3)), flush=True)
    ours_prefill()
    blk = torch.tril(torch.ones(Q, Q, dtype=torch.bool))
    new = torch.randint(0, 1000, (Q,))
    def ours_tree():
        sc.rollback(P); ad.forward(new, torch.arange(P, P + Q), cache=sc, slot_start=P, visible_prefix=P, block_mask=blk)
    dc = DynamicCache(config=model.config)
    model(input_ids=ids[None], past_key_values=dc, use_cache=True, logits_to_keep=1)
    def hf_chain():
        (dc.crop(-(dc.get_seq_length() - P)) if dc.get_seq_length() > P else None); model(input_ids=new[None], past_key_values=dc, use_cache=True, attention_mask=torch.ones(1, P + Q, dtype=torch.long))
    def ours_one():
        sc.rollback(P); ad.forward(new[:1], torch.arange(P, P + 1), cache=sc, slot_start=P, visible_prefix=P, block_mask=blk[:1, :1])
    def hf_one():
        (dc.crop(-(dc.get_seq_length() - P)) if dc.get_seq_length() > P else None); model(input_ids=new[None, :1], past_key_values=dc, use_cache=True, attention_mask=torch.ones(1, P + 1, dtype=torch.long))
    for r in range(3):
        print("verify %d at P=%d ours %.1f ms  hf %.1f ms" % (Q, P, t(ours_tree, 7), t(hf_chain, 7)), flush=True)
        print("one token at P=%d ours %.1f ms  hf %.1f ms" % (P, t(ours_one, 7), t(hf_one, 7)), flush=True)
