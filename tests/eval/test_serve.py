"""`kto-bench serve`: OpenAI's wire format from the engine, log-probs equal to a plain forward pass,
client mistakes answered in OpenAI's error format, and the command itself on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from kto_bench.eval.serve import Server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from kto_bench.demo.world import build_tokenizer, tiny_config

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), hidden=32, layers=1)).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_completions_and_chat_with_logprobs(tiny):
    model, tokenizer, _ = tiny
    with Server(model, tokenizer, name="tiny") as server:
        status, models = call(f"{server.url}/models")
        assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]

        body = {"model": "tiny", "prompt": ["1+2=", "7-3="], "max_tokens": 4, "temperature": 0, "logprobs": 3}
        status, done = call(f"{server.url}/completions", body)
        assert status == 200 and done["object"] == "text_completion" and len(done["choices"]) == 2
        for prompt, choice in zip(body["prompt"], done["choices"], strict=True):
            lp = choice["logprobs"]
            assert "".join(lp["tokens"]) == choice["text"] and choice["finish_reason"] == "length"
            ids = tokenizer(prompt + choice["text"], add_special_tokens=False)["input_ids"]
            with torch.no_grad():  # the model's own distribution at each completion position
                logps = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            n = len(prompt)  # one token per character
            for k, (token, value, alternatives) in enumerate(
                zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)
            ):
                row = logps[n + k - 1]
                assert value == pytest.approx(row[ids[n + k]].item(), abs=1e-5)
                best = row.topk(3)
                want = {
                    tokenizer.decode([i]): v for v, i in zip(*map(torch.Tensor.tolist, best), strict=True)
                }
                assert alternatives == pytest.approx(want, abs=1e-5)
                assert token == max(alternatives, key=alternatives.get)  # greedy at temperature 0
            assert lp["text_offset"][0] == len(prompt)
        assert done["usage"]["completion_tokens"] == 8 and done["usage"]["prompt_tokens"] == 8

        chat = {"messages": [{"role": "user", "content": "2+2="}], "max_tokens": 1, "logprobs": True,
                "top_logprobs": 5, "temperature": 1.0}  # fmt: skip
        status, done = call(f"{server.url}/chat/completions", chat)
        assert status == 200 and done["object"] == "chat.completion"
        (content,) = done["choices"][0]["logprobs"]["content"]
        assert len(content["top_logprobs"]) == 5 and content["bytes"] == list(content["token"].encode())
        values = [t["logprob"] for t in content["top_logprobs"]]
        assert values == sorted(values, reverse=True)
        assert call(f"{server.url}/chat/completions", chat)[1]["choices"] == done["choices"]  # seed 0


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("completions", {"model": "gpt-4", "prompt": "x"}, 404, "model 'gpt-4' is not served here"),
        ("completions", {"prompt": "x" * 300, "max_tokens": 1}, 400, "more than the model's context of 256"),
        ("completions", {"prompt": "x", "n": 2}, 400, "n: not supported"),
        ("completions", {"prompt": 3}, 400, "prompt must be a string"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
         "top_logprobs needs logprobs"),
        ("chat/completions", {"messages": []}, 400, "messages must be a non-empty list"),
        ("nothing", {}, 404, "no route"),
    ],
)  # fmt: skip
def test_client_mistakes_get_openai_errors(tiny, path, body, status, message):
    model, tokenizer, _ = tiny
    with Server(model, tokenizer, name="tiny") as server:
        got, answer = call(f"{server.url}/{path}", body)
    assert got == status and message in answer["error"]["message"]


def test_the_serve_command_binds_loopback_and_stops_on_interrupt(tiny, tmp_path):
    _, _, folder = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-c",
        "from kto_bench.cli import main; main()",
        "serve",
        str(folder),
        "--name",
        "t",
    ]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        seen = ""
        while "serving" not in seen and proc.poll() is None:  # after the weights' progress bars
            seen += proc.stdout.readline()
        assert f"serving t at http://127.0.0.1:{port}/v1" in seen, seen
        assert call(f"http://127.0.0.1:{port}/v1/models")[1]["data"][0]["id"] == "t"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    bad = subprocess.run(
        [*cmd[:4], str(tmp_path / "missing")], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2 and "cannot load a causal LM" in bad.stderr
