"""Teacher-forced agreement of the int4 draft with the bf16 target under sampling.

    flock /tmp/swiftsd-bench.lock python docs/benchmarks/quant/sampling/coupled_agreement.py smollm2-135m 0.7

The first turn of one Spec-Bench question per group; the target samples 128 tokens at temperature T;
one parallel forward of the target and of its int4 copy (the bench's HF-assistant build, which runs
the same packed kernels as the draft) over the sampled text. Per position: greedy top-1 agreement,
agreement of the Gumbel-coupled argmaxes (one noise draw shared, as swiftsd's coupled sampler does),
total variation, and how well each confidence (q's own top-1, or softmax of warped logits + noise)
separates positions the target agrees with from those it does not.
"""
import sys, torch, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from swiftsd.loading import load
from swiftsd.engine.quant import QuantizedWeights
from swiftsd.bench.assisted import build_assistant
from swiftsd.bench.data import build_input, group_of, load_prompts
name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
T = float(sys.argv[2]) if len(sys.argv) > 2 else 0.7
model, tok = load(name, dtype="bf16")
A = build_assistant(model, QuantizedWeights.build(model, "int4"))
seen, prompts = set(), []
for p in load_prompts("/work/shared/data/spec_bench/question.jsonl"):
    if group_of(p.category) not in seen:
        seen.add(group_of(p.category)); prompts.append(build_input(tok, p, 0, []))
stats = {k: [] for k in ["greedy", "coupled", "tv", "conf_q_ge_0.5", "conf_p_ge_0.5", "coupled_self_noise_shift", "conf_noisy_ge_0.5", "agree|conf_q>=0.5", "agree|conf_q<0.5", "agree|noisy>=0.5", "agree|noisy<0.5"]}
for i, ids in enumerate(prompts):
    x = torch.tensor([ids])
    torch.manual_seed(i)
    with torch.no_grad():
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=128, do_sample=True, temperature=T, top_k=0, top_p=1.0)
        lp = model(y).logits[0, len(ids)-1:-1].float()
        lq = A(y).logits[0, len(ids)-1:-1].float()
    wp, wq = lp / T, lq / T
    P, Q = wp.softmax(-1), wq.softmax(-1)
    g = -torch.log(-torch.log(torch.rand_like(wp).clamp(min=1e-20)))
    stats["greedy"].append((lp.argmax(-1) == lq.argmax(-1)).float().mean().item())
    stats["coupled"].append(((wp + g).argmax(-1) == (wq + g).argmax(-1)).float().mean().item())
    stats["tv"].append(0.5 * (P - Q).abs().sum(-1).mean().item())
    stats["conf_q_ge_0.5"].append((Q.max(-1).values >= 0.5).float().mean().item())
    stats["conf_p_ge_0.5"].append((P.max(-1).values >= 0.5).float().mean().item())
    agree = ((wp + g).argmax(-1) == (wq + g).argmax(-1)).float()
    cq = Q.max(-1).values >= 0.5
    cn = (wq + g).softmax(-1).max(-1).values >= 0.5
    stats["conf_noisy_ge_0.5"].append(cn.float().mean().item())
    for nm, m in [("agree|conf_q>=0.5", cq), ("agree|conf_q<0.5", ~cq), ("agree|noisy>=0.5", cn), ("agree|noisy<0.5", ~cn)]:
        stats[nm].append(agree[m].mean().item() if m.any() else float("nan"))
    g2 = torch.roll(g, 1, 0)
    stats["coupled_self_noise_shift"].append(((wp + g).argmax(-1) == (wq + g2).argmax(-1)).float().mean().item())
for k, v in stats.items():
    print(f"{k:28s} mean {sum(v)/len(v):.3f}  per prompt " + " ".join(f"{a:.2f}" for a in v))
