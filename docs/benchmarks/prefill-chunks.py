"""Prefill time and peak memory by chunk size (issue 32): which ``SwiftConfig.prefill_chunk`` to default to.

Each (prompt length, chunk size) runs in a fresh subprocess, so its peak resident memory
(sampled every 2 ms during the prefill, minus the resident memory just before it) is its
own; the best of ``--repeats`` prefill times is reported. Chunk 0 is the whole prompt in
one forward (what swiftsd did before). The prompt is Spec-Bench text, tokenised and cut.

    python3 docs/benchmarks/prefill-chunks.py --model smollm2-135m --dtype bf16 \\
        --lengths 1000 2000 4000 --chunks 0 128 256 512 1024 --threads 1 --out prefill-chunks.json

Run it on a quiet machine: with other jobs on the cores the times mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DATA = HERE.parents[3] / "shared" / "data" / "spec_bench" / "question.jsonl"


def _prompt_ids(tok, n: int) -> list[int]:
    text = ""
    if DATA.exists():
        text = " ".join(t for line in DATA.read_text().splitlines() for t in json.loads(line)["turns"])
    text = text or "The quick brown fox jumps over the lazy dog. " * 2000
    ids = tok(text)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def one(model_name: str, dtype: str, n: int, chunk: int, repeats: int) -> dict:
    """In the child: load, prefill ``repeats`` times, report the best time and the peak RSS growth."""
    import psutil
    import torch

    import swiftsd
    from swiftsd.core.prefill import prefill_chunks
    from swiftsd.engine.cache import SlotKVCache

    model, tok = swiftsd.load(model_name, dtype=dtype)
    dec = swiftsd.SwiftDecoder(model, tok, optimizer=False)
    ad, proc = dec.adapter, psutil.Process()
    ids = _prompt_ids(tok, n)

    def prefill() -> None:
        gen = prefill_chunks(ad, SlotKVCache(ad.num_layers, n + 8), ids, chunk)
        for _ in gen:
            pass

    prefill()  # warm-up (kernels, allocator), then measure from a settled process
    times, peak, base = [], 0, proc.memory_info().rss
    for _ in range(repeats):
        done = threading.Event()
        worker = threading.Thread(target=lambda: (prefill(), done.set()))
        t0 = time.perf_counter()
        worker.start()
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss - base)
            time.sleep(0.002)
        worker.join()
        times.append(time.perf_counter() - t0)
    return {"tokens": n, "chunk": chunk, "seconds": min(times), "all_seconds": times,
            "peak_rss_growth_mib": round(peak / 2**20, 1), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 128, 256, 512, 1024])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--child", nargs=2, type=int, metavar=("TOKENS", "CHUNK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(one(a.model, a.dtype, a.child[0], a.child[1], a.repeats)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    print("| tokens | chunk | prefill s | vs one forward | peak RSS growth MiB |\n|---|---|---|---|---|")
    for n in a.lengths:
        whole = None
        for c in a.chunks:
            cmd = [sys.executable, str(HERE), "--model", a.model, "--dtype", a.dtype, "--repeats", str(a.repeats),
                   "--threads", str(a.threads), "--child", str(n), str(c)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            whole = row["seconds"] if c == 0 else whole
            ratio = f"{row['seconds'] / whole:.2f}x" if whole else "-"
            print(f"| {n} | {c or 'one forward'} | {row['seconds']:.2f} | {ratio} | {row['peak_rss_growth_mib']} |",
                  flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
