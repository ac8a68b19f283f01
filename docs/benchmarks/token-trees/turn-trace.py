"""One Spec-Bench turn, swiftsd against HF prompt lookup: where each one's time goes, forward by forward.

    python docs/benchmarks/token-trees/turn-trace.py MODEL PROMPT_ID [REPEATS] [OUT.json]
    (bf16, one thread; pin a quiet core: taskset -c 1)

Each repeat runs PLD (``model.generate(prompt_lookup_num_tokens=10)``) and then swiftsd on a fresh
``SwiftDecoder`` (a decoder kept across repeats would copy its own earlier output from the stream
suffix index). It times the forwards, not the loop: HF's through forward hooks on the model (nothing
on the model is replaced), and our adapter's ``forward`` (tree body) and ``logits`` (the LM head,
scored apart) by wrapping those two methods of the adapter object. What is left of the wall time is
the loop's own work. Results: turn-trace.md.
"""
import json
import sys
import time

import torch
from swiftsd import SwiftDecoder
from swiftsd.bench.data import build_input, load_prompts
from swiftsd.loading import load


def timed(fn, log: list, kind: str, rows):
    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        if kind != "lm" or k.get("head", a[1] if len(a) > 1 else None) is None:  # not the draft head
            log.append((kind, rows(a, k), time.perf_counter() - t))
        return out
    return wrapper


def hook_timer(model: torch.nn.Module, log: list) -> list:
    """Log ("hf", query tokens, seconds) for each ``model(...)`` call; returns the hook handles."""
    start: list[float] = []

    def pre(module, args, kwargs):
        start.append(time.perf_counter())

    def post(module, args, kwargs, output):
        log.append(("hf", kwargs["input_ids"].shape[1], time.perf_counter() - start.pop()))

    return [model.register_forward_pre_hook(pre, with_kwargs=True),
            model.register_forward_hook(post, with_kwargs=True)]


def summary(name: str, rep: int, wall: float, log: list) -> dict:
    first = next(i for i, c in enumerate(log) if c[0] != "lm")  # the prefill; a head product inside it logs first
    pre = log[first][2]
    fw = [c for c in log[first + 1:] if c[0] != "lm"]
    lm = [c for c in log[first + 1:] if c[0] == "lm"]
    s = dict(method=name, repeat=rep, wall=wall, prefill=pre, decode=wall - pre, forwards=len(fw),
             forward_s=sum(c[2] for c in fw), nodes=sum(c[1] for c in fw), head_products=len(lm),
             head_s=sum(c[2] for c in lm), head_rows=sum(c[1] for c in lm))
    s["other_s"] = s["decode"] - s["forward_s"] - s["head_s"]
    print("%-7s rep %d  wall %.2f s  prefill %.2f  decode %.2f = %d forwards %.2f s (%d nodes, %.0f ms each)"
          " + %d LM-head products %.2f s + loop %.2f s" % (
              name, rep, wall, pre, s["decode"], s["forwards"], s["forward_s"], s["nodes"],
              1000 * s["forward_s"] / max(1, s["forwards"]), s["head_products"], s["head_s"], s["other_s"]),
          flush=True)
    return s


def main() -> None:
    model_name, prompt_id = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(1)
    model, tok = load(model_name, dtype="bfloat16", device="cpu")
    prompt = next(p for p in load_prompts("/work/shared/data/spec_bench/question.jsonl", None, 3)
                  if str(p.id) == prompt_id)
    ids = torch.tensor([build_input(tok, prompt, 0, [])])
    log: list = []
    out, texts = [], {}
    with torch.inference_mode():
        for rep in range(repeats):
            log.clear()
            hooks = hook_timer(model, log)
            t = time.perf_counter()
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=128,
                                 pad_token_id=tok.eos_token_id, prompt_lookup_num_tokens=10)
            wall = time.perf_counter() - t
            for h in hooks:
                h.remove()
            out.append(summary("pld", rep, wall, log))
            texts["pld"] = seq[0, ids.shape[1]:].tolist()

            dec = SwiftDecoder(model, tok)
            ad = dec.adapter  # instance attributes of our adapter object, not of the model
            ad.forward = timed(ad.forward, log, "fw", lambda a, k: a[0].numel())
            ad.logits = timed(ad.logits, log, "lm", lambda a, k: a[0].shape[0])
            dec.generate(ids[:, :8], max_new_tokens=2)  # loads the cached cost model outside the timing
            log.clear()
            t = time.perf_counter()
            res = dec.generate(ids, max_new_tokens=128)
            wall = time.perf_counter() - t
            out.append(summary("swiftsd", rep, wall, log))
            texts["swiftsd"] = res.sequences[0, ids.shape[1]:].tolist()
    print("same text:", texts["pld"] == texts["swiftsd"])
    if len(sys.argv) > 4:
        json.dump(dict(model=model_name, prompt=prompt_id, prompt_tokens=ids.shape[1], runs=out,
                       same_text=texts["pld"] == texts["swiftsd"]), open(sys.argv[4], "w"), indent=1)


if __name__ == "__main__":
    main()
