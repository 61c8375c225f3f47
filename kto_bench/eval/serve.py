"""`kto-bench serve MODEL`: an OpenAI-compatible HTTP server backed by the suite's engine, so that any
OpenAI client (alpaca-eval's annotators among them) can use a local model, offline.

    GET  /v1/models
    POST /v1/chat/completions  messages (rendered with the tokenizer's chat template), max_tokens or
                               max_completion_tokens, temperature, top_p, seed, stop, logprobs, top_logprobs
    POST /v1/completions       prompt (a string or a list of strings), max_tokens, temperature, top_p, seed,
                               stop, logprobs (an int: alternatives per token, the legacy format)

Log-probabilities are the model's own (before temperature and top_p) for the returned text's tokens, plus
the EOS token when generation ended on it, scored in one forward pass over prompt and completion. `seed`
defaults to 0, so a request is answered the same way every time; temperature 0 is greedy. A request for
another model than the one served, a prompt longer than the context, or an option the engine does not
have (n > 1, streaming, echo, tools) gets a 4xx error in OpenAI's format. Requests run one at a time.

The server binds 127.0.0.1 unless told otherwise, and has no authentication: anyone who can reach the port
can use the model.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kto_bench.errors import EvalError, KtoBenchError

MAX_TOP_LOGPROBS = 20
UNSUPPORTED = ("n", "stream", "echo", "tools", "functions", "best_of", "suffix")


class RequestError(Exception):
    """A client mistake: answered with `status` and OpenAI's error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length", as OpenAI says it
    prompt_tokens: int
    tokens: list[int]  # the scored completion tokens (with the EOS token when generation ended on it)
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None  # per token: (log-prob, top alternatives)


class ModelServer:
    """The engine behind the HTTP handler: request validation, generation, log-probs (one at a time)."""

    def __init__(self, engine, name: str) -> None:
        self.engine, self.name = engine, name
        self.lock = threading.Lock()
        self.requests = 0  # completions answered (what a test of caching counts)

    # -- one request --------------------------------------------------------------------------
    def complete(self, prompt: str, body: dict, top_k: int | None, default_max: int | None) -> Completion:
        """Generate for one prompt; `top_k` None = no log-probs, else that many alternatives per token;
        without max_tokens, `default_max` tokens (None: the rest of the context)."""
        engine = self.engine
        context = engine.encode(prompt)
        max_tokens = _int(body, "max_completion_tokens", None) or _int(body, "max_tokens", default_max)
        max_tokens = engine.max_length - len(context) if max_tokens is None else max_tokens
        if max_tokens < 1:
            raise RequestError("max_tokens must be at least 1", param="max_tokens")
        if len(context) + max_tokens > engine.max_length:
            raise RequestError(
                f"the prompt has {len(context)} tokens and max_tokens is {max_tokens}: more than the model's "
                f"context of {engine.max_length} tokens; shorten the prompt or lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("stop must be a string or a list of strings", param="stop")
        temperature = _number(body, "temperature", 1.0)
        top_p = _number(body, "top_p", 1.0)
        if not 0 <= temperature <= 2 or not 0 < top_p <= 1:
            raise RequestError("temperature must be in [0, 2] and top_p in (0, 1]", param="temperature")
        with self.lock:
            (gen,) = engine.generate_details(
                [prompt],
                max_new_tokens=max_tokens,
                stop=stop,
                temperature=temperature,
                top_p=top_p,
                seed=_int(body, "seed", 0),
                progress=False,
            )
            tokens = engine.encode_pair(prompt, gen.text)[1] if gen.text else []
            if gen.finish_reason == "eos":
                tokens = [*tokens, engine.eos_id]
            scored = None if top_k is None else engine.token_logprobs(context, tokens, top_k)
            self.requests += 1
        finish = "length" if gen.finish_reason == "length" else "stop"
        return Completion(gen.text, finish, len(context), tokens, scored)

    def token_text(self, token: int) -> str:
        return self.engine.tokenizer.decode([token], skip_special_tokens=False)

    # -- endpoints ----------------------------------------------------------------------------
    def check(self, body: dict) -> None:
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(
                f"model {model!r} is not served here; this server serves {self.name!r}",
                status=404,
                param="model",
                code="model_not_found",
            )
        given = [k for k in UNSUPPORTED if body.get(k) not in (None, False, 1, [], "")]
        if given:
            raise RequestError(f"{', '.join(given)}: not supported by kto-bench serve", param=given[0])

    def chat(self, body: dict) -> dict:
        self.check(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list", param="messages")
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(
                f"{self.name} has no chat template; use /v1/completions with a plain prompt", param="messages"
            )
        try:
            prompt = tokenizer.apply_chat_template(
                [{"role": m["role"], "content": _content(m.get("content"))} for m in messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        except (KeyError, TypeError) as e:
            raise RequestError(
                f"each message needs a role and text content ({e})", param="messages"
            ) from None
        top_k = None
        if body.get("logprobs"):
            top_k = _int(body, "top_logprobs", 0)
        elif body.get("top_logprobs"):
            raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        done = self.complete(prompt, body, _top(top_k, "top_logprobs"), None)
        logprobs = None
        if done.logprobs is not None:
            logprobs = {
                "content": [
                    {
                        **self._token(t, lp),
                        "top_logprobs": [self._token(i, v) for i, v in alternatives],
                    }
                    for t, (lp, alternatives) in zip(done.tokens, done.logprobs, strict=True)
                ]
            }
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "finish_reason": done.finish_reason,
            "logprobs": logprobs,
        }
        return self._response("chat.completion", [choice], done.prompt_tokens, len(done.tokens))

    def completions(self, body: dict) -> dict:
        self.check(body)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("prompt must be a string or a non-empty list of strings", param="prompt")
        top_k = _top(None if body.get("logprobs") is None else _int(body, "logprobs", 0), "logprobs")
        choices, used = [], [0, 0]
        for index, prompt in enumerate(prompts):
            done = self.complete(prompt, body, top_k, 16)  # OpenAI's default
            logprobs = None
            if done.logprobs is not None:
                texts = [self.token_text(t) for t in done.tokens]
                offsets = [len(prompt) + sum(len(t) for t in texts[:i]) for i in range(len(texts))]
                logprobs = {
                    "tokens": texts,
                    "token_logprobs": [lp for lp, _ in done.logprobs],
                    "top_logprobs": [{self.token_text(i): v for i, v in alt} for _, alt in done.logprobs],
                    "text_offset": offsets,
                }
            choices.append(
                {"index": index, "text": done.text, "finish_reason": done.finish_reason, "logprobs": logprobs}
            )
            used = [used[0] + done.prompt_tokens, used[1] + len(done.tokens)]
        return self._response("text_completion", choices, *used)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "kto-bench"}]}

    def _token(self, token: int, logprob: float) -> dict:
        text = self.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _response(self, kind: str, choices: list, prompt_tokens: int, completion_tokens: int) -> dict:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{self.requests}",
            "object": kind,
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _int(body: dict, key: str, default: int | None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, got {value!r}", param=key)
    return value


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{key} must be a number, got {value!r}", param=key)
    return float(value)


def _top(k: int | None, key: str) -> int | None:
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        raise RequestError(f"{key} must be between 0 and {MAX_TOP_LOGPROBS}", param=key)
    return k


def _content(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p["text"] for p in content)
    raise TypeError("content must be a string or a list of text parts")


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, self.server.model.models())
        else:
            self._send(404, _error(f"no route GET {self.path}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        routes = {
            "/v1/chat/completions": self.server.model.chat,
            "/v1/completions": self.server.model.completions,
        }
        route = routes.get(self.path.rstrip("/"))
        try:
            if route is None:
                raise RequestError(f"no route POST {self.path}", status=404)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except ValueError as e:
                raise RequestError(f"the request body is not JSON: {e}") from None
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            self._send(200, route(body))
        except RequestError as e:
            self._send(e.status, _error(str(e), "invalid_request_error", e.param, e.code))
        except Exception as e:  # the engine failed: say so, keep serving
            self._send(500, _error(f"{type(e).__name__}: {e}", "server_error"))

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: ModelServer, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.model, self.verbose = model, verbose


class Server:
    """An OpenAI-compatible server for one model; `with Server(...) as s:` serves it from a thread and
    stops it on exit (port 0: a free port, read `s.url`)."""

    def __init__(
        self, model, tokenizer, name: str, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
    ) -> None:
        from kto_bench.eval.engine import Engine

        self.model = ModelServer(Engine(model, tokenizer, batch_size=1, decode="dynamic"), name)
        try:
            self.http = _HTTPServer((host, port), self.model, verbose)
        except OSError as e:
            raise EvalError(
                f"serve: cannot listen on {host}:{port} ({e.strerror}); choose another --port"
            ) from None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}/v1"

    def serve_forever(self) -> None:
        self.http.serve_forever()

    def __enter__(self) -> Server:
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.thread is not None:
            self.http.shutdown()
            self.thread.join()
            self.thread = None
        self.http.server_close()


def load(path: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) of MODEL as `kto-bench eval` takes it (a run folder, a model folder, an offline
    mirror or a hub id: `evaluate.resolve_model`), loaded by the suite's own loaders (`models`)."""
    import torch

    from kto_bench import models
    from kto_bench.evaluate import resolve_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = resolve_model(path, dtype)
        tokenizer = models.load_tokenizer(target.model, target.where)
        model = models.load_model(target.model, target.where, device)
    except KtoBenchError as e:
        raise EvalError(f"serve: cannot load a causal LM from {path!r}: {e}") from None
    return model.eval(), tokenizer
