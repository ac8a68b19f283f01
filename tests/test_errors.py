"""Bad input gets a clear error: exception type + message in the API; one line and exit 2 in the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swiftsd import (
    ContextLengthError,
    InvalidArgumentError,
    InvalidSkipSetError,
    MissingPackageError,
    ModelNotFoundError,
    SkipSet,
    SwiftDecoder,
    SwiftSDError,
)
from swiftsd.cli.main import main
from tiny import tiny_model
from tiny_cli import save_tiny_model_dir


CONTEXT = 1024  # max_position_embeddings of the tiny models


@pytest.fixture(scope="module")
def dec() -> SwiftDecoder:
    return SwiftDecoder(tiny_model("llama", seed=0), optimizer=False)


IDS = torch.tensor([[1, 2, 3, 4]])


# ---------------------------------------------------------------------------- the API
@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(temperature=-0.5), InvalidArgumentError, ["temperature", ">= 0", "-0.5"]),
    (dict(temperature=float("nan")), InvalidArgumentError, ["temperature"]),
    (dict(temperature=1.0, top_p=0.0), InvalidArgumentError, ["top_p", "(0, 1]", "0.0"]),
    (dict(temperature=1.0, top_p=1.5), InvalidArgumentError, ["top_p", "(0, 1]", "1.5"]),
    (dict(temperature=1.0, top_k=-1), InvalidArgumentError, ["top_k", ">= 0", "-1"]),
    (dict(top_k=2.5), InvalidArgumentError, ["top_k", "integer"]),
    (dict(max_new_tokens=0), InvalidArgumentError, ["max_new_tokens", ">= 1", "0"]),
    (dict(max_new_tokens=-3), InvalidArgumentError, ["max_new_tokens"]),
    (dict(skip_set=SkipSet(attn=[99])), InvalidSkipSetError, ["99", "6 decoder layers", "0..5"]),
    (dict(skip_set={"mlp": [-1, 2]}), InvalidSkipSetError, ["-1", "6 decoder layers"]),
    (dict(skip_set='{"attn": [1,'), InvalidSkipSetError, ["not valid JSON"]),
    (dict(skip_set='{"atn": [1]}'), InvalidSkipSetError, ['{"attn": [...], "mlp": [...]}']),
    (dict(skip_set='{"attn": ["x"]}'), InvalidSkipSetError, ["integer layer indices"]),
    (dict(skip_set="[1, 2]"), InvalidSkipSetError, ["JSON object"]),
])
def test_generate_rejects_bad_arguments(dec, kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        dec.generate(IDS, **{"max_new_tokens": 5, **kwargs})
    for w in words:
        assert w in str(info.value), f"{w!r} missing from: {info.value}"
    assert isinstance(info.value, SwiftSDError) and isinstance(info.value, ValueError)
    with pytest.raises(exc):  # the stream form validates eagerly, before the first token
        dec.stream(IDS, **{"max_new_tokens": 5, **kwargs})


@pytest.mark.parametrize("prompt", [[], torch.empty(1, 0, dtype=torch.long), torch.empty(0, dtype=torch.long)])
def test_empty_prompt(dec, prompt) -> None:
    with pytest.raises(InvalidArgumentError, match="prompt is empty"):
        dec.generate(prompt, max_new_tokens=4)


def test_prompt_plus_new_tokens_beyond_context(dec) -> None:
    ids = torch.zeros(1, 1000, dtype=torch.long)
    with pytest.raises(ContextLengthError) as info:
        dec.generate(ids, max_new_tokens=25)
    msg = str(info.value)
    assert "1000" in msg and "25" in msg and str(CONTEXT) in msg and "max_new_tokens" in msg
    assert dec.generate(ids, max_new_tokens=24).stats.new_tokens == 24  # exactly at the limit is fine


def test_batch_of_two(dec) -> None:
    with pytest.raises(InvalidArgumentError, match="batch of 2"):
        dec.generate(torch.zeros(2, 5, dtype=torch.long), max_new_tokens=3)


@pytest.mark.parametrize("prompt,words", [
    (torch.tensor([[1, 200]]), ["200", "vocabulary"]),
    (torch.tensor([[0.5, 1.0]]), ["LongTensor"]),
    (["a", "b"], ["token ids"]),
    ("some text", ["tokenizer"]),
])
def test_bad_prompt_values(dec, prompt, words) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        dec.generate(prompt, max_new_tokens=3)
    assert all(w in str(info.value) for w in words)


def test_constructor_rejects_bad_options() -> None:
    model = tiny_model("llama", seed=0)
    with pytest.raises(InvalidArgumentError) as info:
        SwiftDecoder(model, max_drafts=4)
    assert "max_drafts" in str(info.value) and "max_draft" in str(info.value)  # names the valid options
    with pytest.raises(InvalidSkipSetError, match="99"):
        SwiftDecoder(model, skip_set={"attn": [1, 99]})
    with pytest.raises(InvalidArgumentError, match="stop_threshold"):
        SwiftDecoder(model, stop_threshold=1.5)
    with pytest.raises(InvalidArgumentError, match="tree_widths"):
        SwiftDecoder(model, tree_widths=(1, 2))


def test_skip_set_value_object_errors() -> None:
    with pytest.raises(InvalidSkipSetError, match="expected 8 flags"):
        SkipSet.from_flags([1, 0, 1], num_layers=6)
    with pytest.raises(InvalidSkipSetError, match=r"layer\(s\) \[6\]"):
        SkipSet(mlp=[6]).validate(6)


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-err"), max_positions=64))


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-plain"), chat_template=False))


def _error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2, nothing on stdout, one error line and no traceback; return it."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert out == ""
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("swiftsd: error:")]
    assert len(errors) == 1, err
    return errors[0]


# Caught before any model is loaded (no --model needed: the default is never touched).
@pytest.mark.parametrize("extra,words", [
    (["--prompt", ""], ["--prompt", "empty"]),
    (["--prompt", "   "], ["--prompt", "empty"]),
    (["--prompt", "hi", "--temperature", "-1"], ["temperature", ">= 0"]),
    (["--prompt", "hi", "--top-p", "0"], ["top_p", "(0, 1]"]),
    (["--prompt", "hi", "--top-p", "1.5"], ["top_p", "(0, 1]"]),
    (["--prompt", "hi", "--top-k", "-1"], ["top_k", ">= 0"]),
    (["--prompt", "hi", "--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    (["--prompt", "hi", "--skip-set", '{"attn": [1,'], ["not valid JSON"]),
    (["--prompt", "hi", "--skip-set", '{"layers": [1]}'], ['"attn"']),
    (["--prompt", "hi", "--skip-set", "no/such/file.json"], ["neither inline JSON nor an existing file"]),
    (["--prompt", "hi", "--stream", "--json"], ["--stream", "--json"]),
    (["--prompt", "hi", "--skip-set", "{}", "--skip-set-store", "s.json"], ["--skip-set-store", "not both"]),
])
def test_cli_rejects_before_loading(capsys, monkeypatch, extra, words) -> None:
    import swiftsd.cli.common

    def no_load(args):
        raise AssertionError("the model must not be loaded for an input error")

    monkeypatch.setattr(swiftsd.cli.common, "load_model", no_load)
    line = _error_line(capsys, ["generate", *extra])
    assert all(w in line for w in words), line


@pytest.mark.parametrize("extra,words", [
    (["--prompt", "x" * 60, "--max-new-tokens", "10"], ["exceeds the model's context of 64 tokens"]),
    (["--prompt", "hi", "--skip-set", '{"attn": [99]}'], ["99", "6 decoder layers"]),
    (["--prompt", "hi", "--skip-set", '{"mlp": [2], "attn": [6]}'], ["[6]", "0..5"]),
])
def test_cli_rejects_after_loading(capsys, model_dir, extra, words) -> None:
    line = _error_line(capsys, ["generate", "--model", model_dir, *extra])
    assert all(w in line for w in words), line


def test_cli_chat_without_template(capsys, no_template_dir) -> None:
    line = _error_line(capsys, ["generate", "--model", no_template_dir, "--prompt", "hi", "--chat"])
    assert "chat template" in line and "drop --chat" in line


@pytest.mark.parametrize("model,words", [
    ("no-such-model", ["unknown model 'no-such-model'", "smollm2-135m"]),
    ("/nonexistent/dir/model.gguf", ["no such file", "/nonexistent/dir/model.gguf"]),
    ("./no/such/folder/", ["no such file"]),
])
def test_cli_unknown_model_or_missing_file(capsys, model, words) -> None:
    line = _error_line(capsys, ["generate", "--model", model, "--prompt", "hi"])
    assert all(w in line for w in words), line


def test_missing_package_names_the_pip_command(capsys, monkeypatch, tmp_path) -> None:
    import swiftsd.loading as loading

    # an empty cache: a model cached earlier loads without its packages, which is not what is tested
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    missing = [n for n, m in loading.PACKAGED_MODELS.items() if not m.installed()]
    if not missing:
        pytest.skip("every packaged model is installed here")
    name = missing[0]
    with pytest.raises(MissingPackageError) as info:
        loading.load(name)
    assert isinstance(info.value, ModelNotFoundError)
    assert loading.PACKAGED_MODELS[name].install in str(info.value)
    rc = main(["generate", "--model", name, "--prompt", "hi"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"swiftsd: error: model '{name}'") and "pip install" in err


def test_cli_argparse_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", "hi", "--max-new-tokens", "many"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid int value: 'many'" in err and "Traceback" not in err


def test_cli_subprocess_one_line_exit_2() -> None:
    """The real entry point, in its own process: one stderr line, exit code 2."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "swiftsd.cli.main", "generate", "--prompt", "hi", "--top-p", "1.5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("swiftsd: error:") and "top_p" in lines[0], proc.stderr
