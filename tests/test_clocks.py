"""A request's clock starts when decoding starts: time a stream waits before it is iterated (a server's
queue) is neither prefill nor decoding, for the stats, the planner's wall-clock bound and the optimiser's
time budget; the server counts it as queue wait, its own metric."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from swiftsd import SwiftDecoder
from swiftsd.server import create_app
from tiny import cheap_tree_costs, tiny_model
from tiny_server_model import build_model, build_tokenizer, metric_total, parse_metrics, serve_in_process

WAIT_S = 2.0  # far longer than a tiny model's whole request


def test_a_stream_left_waiting_reports_its_true_prefill() -> None:
    model = tiny_model("llama", seed=3)
    dec = SwiftDecoder(model, cost_cache=False, optimizer={"max_opt_share": 0.5, "context_window": 4})
    dec.costs = cheap_tree_costs()  # the optimiser searches here, whatever this machine's timings
    prompt = [5, 6, 7, 8, 5, 6, 7]
    stream = dec.stream(prompt, max_new_tokens=24)
    time.sleep(WAIT_S)  # created, then left waiting, as a queued server request is
    chunks = list(stream)
    stats = stream.result.stats
    assert sum(map(len, chunks)) == stats.new_tokens == 24
    assert stats.time_prefill < WAIT_S / 2 and stats.wall_time < WAIT_S / 2, stats.summary()
    parts = stats.time_prefill + stats.time_draft + stats.time_verify + stats.time_optimize
    assert 0 <= stats.time_other and parts <= stats.wall_time
    # what the planner's wall-clock bound and the optimiser's time budget read: step times only
    steps = [s for s, _ in [*dec.planner.wall.drafted, *dec.planner.wall.free]]
    assert steps and max(steps) < WAIT_S / 2
    assert 0 < dec.optimizer.state.request_decoding < WAIT_S / 2
    assert dec.optimizer.state.time_decoding < WAIT_S / 2


def test_concurrent_requests_phase_times_stay_within_busy_time_and_queue_wait_is_its_own_metric() -> None:
    tok = build_tokenizer()
    model = build_model(len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("halt"))
    model.generation_config.eos_token_id = model.config.eos_token_id = None  # every request runs to max_tokens
    app = create_app(SwiftDecoder(model, tok, cost_cache=False), tok, "tiny")
    prompts = ["the cat", "red fox jump", "one two three", "big dog"]
    with serve_in_process(app) as base:
        with ThreadPoolExecutor(len(prompts)) as pool:
            replies = list(pool.map(lambda p: httpx.post(base + "/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": p, "max_tokens": 24, "temperature": 0}), prompts))
        assert [r.status_code for r in replies] == [200] * len(prompts)
        metrics = parse_metrics(httpx.get(base + "/metrics").text)
    busy = metric_total(metrics, "swiftsd_engine_busy_seconds_total")
    phases = metric_total(metrics, "swiftsd_phase_seconds_total")
    assert 0 < phases <= busy, (phases, busy)
    assert metric_total(metrics, "swiftsd_queue_wait_seconds_count") == len(prompts)
    waited = metric_total(metrics, "swiftsd_queue_wait_seconds_sum")
    assert waited > 0  # at least three of them waited behind another
    inf = metrics[("swiftsd_queue_wait_seconds_bucket", (("le", "+Inf"),))]
    assert inf == len(prompts)
