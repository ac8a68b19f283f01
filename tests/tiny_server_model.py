"""A tiny random Llama plus a word-level tokenizer with a chat template, saved as a
Hugging Face directory, so the server tests can run `swiftsd serve --model DIR`
offline through the loader's local-directory path.

The model is random, except for one planted rule that makes end-of-sequence
testable: after the word ``halt`` the model's top token is ``</s>``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from tiny import tiny_model

WORDS = (
    "the a an and or but if then else when where why how what who which this that these those "
    "cat dog bird fish horse cow sheep goat mouse lion tiger bear wolf fox owl "
    "red green blue black white gray pink brown gold silver "
    "big small old new fast slow hot cold dark bright "
    "run walk sit jump swim fly sing read write eat "
    "one two three four five six seven eight nine ten "
    "café naïve über 日本 😀 . , ! ? ; "
    "system user assistant :"
).split()
SPECIALS = ["<unk>", "<s>", "</s>", "halt"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def build_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS[:3] + [SPECIALS[3]] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, eos_id: int, halt_id: int, seed: int = 0):
    """tests/tiny.py's Llama with one planted rule: the token after ``halt`` is ``</s>``."""
    model = tiny_model("llama", seed=seed, vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=1)
    with torch.no_grad():
        emb, head = model.get_input_embeddings().weight, model.lm_head.weight
        direction = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(seed + 1))
        direction /= direction.norm()
        emb -= torch.outer(emb @ direction, direction)  # no other token points along the rule's direction
        head -= torch.outer(head @ direction, direction)
        emb[halt_id] = 40.0 * direction  # dominates the residual stream, so the last layer still sees it
        head[eos_id] = 1.5 * direction
        head[halt_id] *= 0.5  # keep "halt" itself rare
    model.generation_config.eos_token_id = eos_id
    model.generation_config.bos_token_id = 1
    model.generation_config.pad_token_id = eos_id
    return model


def save_tiny_server_model(out: str | Path, chat_template: bool = True, seed: int = 0, eos: bool = True) -> Path:
    """``eos=False``: the model never ends a generation by itself (every request runs to max_tokens)."""
    out = Path(out)
    tok = build_tokenizer(chat_template)
    model = build_model(len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("halt"), seed)
    if not eos:
        model.config.eos_token_id = None
        model.generation_config.eos_token_id = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- a server subprocess
SRC = Path(__file__).resolve().parent.parent / "src"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m swiftsd.cli.main serve ...` on a free loopback port; ``stop()`` always ends it."""

    def __init__(self, model: str | Path, *extra: str, log_dir: str | Path, startup_s: float = 240.0) -> None:
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # a tiny model decodes fastest on one thread; on a shared 2-core machine, two
        # OpenMP threads fighting other processes are 10-20x slower
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [sys.executable, "-m", "swiftsd.cli.main", "serve", "--model", self.model, "--port", str(self.port),
               "--log-level", "warning", *extra]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up:\n{self.log()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not healthy after {startup_s:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 20.0) -> int | None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


API_KEY = "test-key-123"


@contextmanager
def serve_in_process(app) -> Iterator[str]:
    """``app`` on a free loopback port, in a uvicorn thread of this process; yields its base URL."""
    import threading
    import time

    import uvicorn

    from swiftsd.server.transport import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        assert time.monotonic() - t0 < 30 and thread.is_alive(), "in-process server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """/metrics text as {(sample name, ((label, value), ...)): value}, by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric_total(metrics: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, lab), v in metrics.items() if n == name and set(labels.items()) <= set(lab))


def expected_completion(model, tokenizer, prompt_ids: list[int], max_new: int) -> tuple[str, list[int]]:
    """Plain HF greedy decoding: the completion text (as the full text extends the prompt's) and its ids."""
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    new = out[0, len(prompt_ids):].tolist()
    return completion_text(tokenizer, prompt_ids, new, model.generation_config.eos_token_id), new


def completion_text(tokenizer, prompt_ids: list[int], new: list[int], eos: int | None) -> str:
    new = new[: new.index(eos)] if eos in new else new
    full = tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head):]
