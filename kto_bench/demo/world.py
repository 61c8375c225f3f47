"""The demo's small but honest world: verifiable arithmetic, a character tokenizer, a tiny SFT model.

Everything here runs offline on a CPU in a few minutes and is cached under a key of its
`DemoWorldSpec` (the spec's `model.world`):
  1. problems like "Compute 7+5-9." with a checkable chain of thought ending "The answer is 3.";
  2. a character-level tokenizer with a chat template, built locally;
  3. a small Llama built from a config and supervised-trained from scratch on a *mixture* of a correct
     and a systematically flawed procedure: a `flaw_ending` fraction of the demonstrations end "The result
     is N." (the verifier only accepts "The answer is N."), a `flaw_sign` fraction drop the minus sign of
     negative steps. The SFT model samples from both modes, so the verifier's feedback says which mode is
     wanted: preference optimization shifts probability between modes it already has (docs/DEMO.md);
  4. binary feedback the way production makes it: sample several completions per prompt from the SFT
     model, label each with the verifier (correct = desirable), and form a pair wherever a prompt has both;
  5. held-out splits, disjoint from everything above and from each other: the reported generative items,
     the reported multiple-choice items (four full worked answers scored by log-likelihood), and a dev
     split that hyperparameter tuning reads (`kto_bench.tune`).

The build runs in a subprocess with a fixed environment (one thread, MKL/oneDNN/ATen pinned to their AVX2
code paths, deterministic algorithms), so it gives the same bytes whatever the caller's thread settings;
`world_hash` returns the content hash recorded for provenance.

Over 400 lines because the world's steps (problems, tokenizer, SFT model, feedback, held-out splits) are
one content-hashed build; each step is a small function.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from kto_bench.data.canonical import Pair, messages
from kto_bench.errors import DataError, KtoBenchError
from kto_bench.io import atomic_write_json, read_json, read_jsonl, stable_hash, write_jsonl
from kto_bench.numerics import CPU_NUMERICS
from kto_bench.progress import progress as progress_display
from kto_bench.spec import DEMO_WORLDS, DemoWorldSpec, ModelSpec

SPECIALS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHARS = (
    list("0123456789+-=.,:?!'\"()[]{}/*% \n")
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'user' %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ANSWER_RE = re.compile(r"The answer is (-?\d+)")
FINAL_RE = re.compile(r"The (?:answer|result) is (-?\d+)")


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def question(self) -> str:
        expr = str(self.terms[0]) + "".join(f"{o}{t}" for o, t in zip(self.ops, self.terms[1:], strict=True))
        return f"Compute {expr}."

    @property
    def answer(self) -> int:
        value = self.terms[0]
        for op, t in zip(self.ops, self.terms[1:], strict=True):
            value = value + t if op == "+" else value - t
        return value

    @property
    def solution(self) -> str:
        return self.worked()

    def worked(self, *, flaw_ending: bool = False, flaw_sign: bool = False, last: int | None = None) -> str:
        """The step-by-step solution; the flaws are the SFT data's systematic errors, `last` replaces the
        final result (the multiple-choice distractors)."""
        steps, value = [], self.terms[0]
        for i, (op, t) in enumerate(zip(self.ops, self.terms[1:], strict=True)):
            new = value + t if op == "+" else value - t
            if flaw_sign:
                new = abs(new)  # the flawed procedure drops the minus sign and carries on
            if last is not None and i == len(self.ops) - 1:
                new = last
            steps.append(f"{value}{op}{t}={new}.")
            value = new
        return " ".join(steps) + (f" The result is {value}." if flaw_ending else f" The answer is {value}.")


def sample_problem(rng: random.Random, n_terms: int | None = None, max_term: int = 12) -> Problem:
    n = n_terms or rng.choice([2, 3])
    terms = tuple(rng.randint(1, max_term) for _ in range(n))
    ops = tuple(rng.choice("+-") for _ in range(n - 1))
    return Problem(terms, ops)


def verify(problem_answer: str | int, completion: str) -> bool:
    """The verifier: the completion's final 'The answer is N' equals the true answer."""
    found = ANSWER_RE.findall(completion)
    return bool(found) and found[-1] == str(problem_answer)


def distractors(answer: int, rng: random.Random) -> list[int]:
    out: set[int] = set()
    while len(out) < 3:
        d = answer + rng.choice([-10, -2, -1, 1, 2, 10, 11, -11])
        if d != answer:
            out.add(d)
    return sorted(out)


def mc_item(p: Problem, rng: random.Random) -> tuple[list[str], int]:
    """Four full worked answers that differ in the last step's result; the model scores each whole answer
    (a letter it never learned would test nothing)."""
    finals = [p.answer, *distractors(p.answer, rng)]
    rng.shuffle(finals)
    return [p.worked(last=f) for f in finals], finals.index(p.answer)


def problems(
    seed: int, n: int, exclude: set[str] = frozenset(), n_terms: int | None = None, max_term: int = 12
) -> list[Problem]:
    """n distinct seeded problems not in `exclude` (fails loudly if the problem space is too small)."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    for _ in range(50 * n + 1000):
        if len(out) == n:
            return out
        p = sample_problem(rng, n_terms, max_term)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    raise ValueError(f"cannot draw {n} distinct problems (terms ≤ {max_term}, {n_terms or '2-3'} terms)")


# ----------------------------------------------------------------------------- tokenizer and model


def build_tokenizer():
    """A character-level fast tokenizer with a chat template; specials are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    vocab["<|unk|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS + ["<|unk|>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        unk_token="<|unk|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.padding_side = "right"
    return fast


def tiny_config(vocab_size: int, hidden: int = 96, layers: int = 3):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        attention_dropout=0.0,
    )


# ----------------------------------------------------------------------------- the world

VERSION = 3  # bump when the generator code changes, so stale cached worlds are not reused
# Fields added after a world version shipped, with the value that reproduces the old worlds: at that value
# they stay out of the cache key, so adding a field does not rename (and rebuild) every existing world.
KEY_NEUTRAL: dict[str, object] = {"flaw_sign": 0.0}
# The build's fixed environment: one thread, and the math libraries held to one code path (AVX2; MKL's
# conditional numerical reproducibility), so the bytes do not depend on the caller's settings or the CPU.
BUILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    **CPU_NUMERICS,
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONHASHSEED": "0",
}
PROGRESS = "@progress "  # a line of the build's stdout that reports progress: "@progress PHASE|DONE|TOTAL"


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


# Content hashes of shipped worlds as built on the reference machine (x86-64, torch 2.13 CPU wheel with
# MKL): a build elsewhere that differs is flagged in world.json and the log (provenance keeps its hash).
REFERENCE_HASHES = {
    "64c4507829ee": "72c6c134c40a7e48fae9d1f701b09fdbbdc07b8c163f2ed3d17ab2888f2ffdfd",  # arith-sft (demo)
}


def world_config(name: str, **overrides) -> DemoWorldSpec:
    """The world of a preset name (spec.DEMO_WORLDS), with field overrides."""
    return ModelSpec(source="demo", name=name, world=overrides or None).world


def world_key(cfg: DemoWorldSpec) -> str:
    """The cache key: a hash of the generator version and every field (key-neutral ones at their neutral
    value left out)."""
    fields = {k: v for k, v in cfg.model_dump().items() if not (k in KEY_NEUTRAL and KEY_NEUTRAL[k] == v)}
    return stable_hash({"version": VERSION, **fields}, 12)


def cache_root() -> Path:
    return Path(os.environ.get("KTO_BENCH_CACHE", Path.home() / ".cache" / "kto-bench"))


def world_dir(cfg: DemoWorldSpec) -> Path:
    return cache_root() / "demo-world" / world_key(cfg)


@dataclass(frozen=True)
class Splits:
    gen: list[Problem]  # reported generative items
    mc: list[Problem]  # reported multiple-choice items
    dev: list[Problem]  # tuning items
    sft: list[Problem]
    feedback: list[Problem]


def splits(cfg: DemoWorldSpec) -> Splits:
    """Every problem set of the world, pairwise disjoint (fails loudly if the problem space is too small)."""
    used: set[str] = set()

    def draw(offset: int, n: int) -> list[Problem]:
        out = problems(cfg.seed + offset, n, exclude=used, max_term=cfg.max_term)
        used.update(p.question for p in out)
        return out

    gen, mc, dev = draw(101, cfg.n_eval), draw(202, cfg.n_eval_mc), draw(303, cfg.n_dev)
    return Splits(gen, mc, dev, draw(1, cfg.n_sft), draw(505, cfg.n_feedback_prompts))


def gen_rows(items: list[Problem], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "question": p.question, "solution": p.solution, "answer": str(p.answer)}
        for i, p in enumerate(items)
    ]


def write_eval_files(out_dir: Path, cfg: DemoWorldSpec | None = None) -> dict[str, Path]:
    """Held-out evaluation data in the shapes the demo tasks read (GSM8K-like, MMLU-like, and the dev split)."""
    cfg = cfg or world_config("arith-sft")
    s = splits(cfg)
    rng = random.Random(cfg.seed + 606)
    mc_rows = []
    for i, p in enumerate(s.mc):
        choices, label = mc_item(p, rng)
        mc_rows.append(
            {
                "id": f"mc-{i}",
                "question": p.question,
                "choices": choices,
                "label": label,
                "answer": str(p.answer),
            }
        )
    rows = {"gen": gen_rows(s.gen, "gen"), "mc": mc_rows, "dev": gen_rows(s.dev, "dev")}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"demo_arith_{k}.jsonl" for k in rows}
    for k, path in paths.items():
        write_jsonl(path, rows[k])
    return paths


def sft_texts(cfg: DemoWorldSpec, sft: list[Problem] | None = None) -> list[tuple[str, str]]:
    """(prompt, completion) SFT examples: the mixture of correct and flawed worked solutions."""
    rng = random.Random(cfg.seed + 404)
    out = []
    for p in splits(cfg).sft if sft is None else sft:
        ending, sign = rng.random() < cfg.flaw_ending, rng.random() < cfg.flaw_sign
        out.append((p.question, p.worked(flaw_ending=ending, flaw_sign=sign)))
    return out


def encode_chat(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt (with generation prompt) and of completion + eos."""
    p = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids, c_ids


def train_sft(cfg: DemoWorldSpec, tokenizer, texts: list[tuple[str, str]], log=print, progress=_no_progress):
    """Supervised training from scratch on completion tokens only; returns the model (eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), cfg.hidden, cfg.layers))
    before, after = tokenizer.apply_chat_template(
        [{"role": "user", "content": "\0"}], add_generation_prompt=True, tokenize=False
    ).split("\0")
    prompt_ids = tokenizer([before + p + after for p, _ in texts], add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([c for _, c in texts], add_special_tokens=False)["input_ids"]
    examples = [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    assert examples[0] == encode_chat(tokenizer, *texts[0])  # the batched rendering is the chat template's
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / cfg.sft_steps)
    )
    rng = random.Random(cfg.seed)
    model.train()
    for step in range(cfg.sft_steps):
        batch = rng.sample(examples, cfg.sft_batch)
        length = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), length), tokenizer.pad_token_id)
        labels = torch.full((len(batch), length), -100)
        for i, (p, c) in enumerate(batch):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
        loss = model(
            input_ids=ids, attention_mask=(labels != -100) | (ids != tokenizer.pad_token_id), labels=labels
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        progress("demo world: SFT steps", step + 1, cfg.sft_steps)
        if step % 250 == 0 or step == cfg.sft_steps - 1:
            log(f"demo SFT step {step}/{cfg.sft_steps} loss {loss.item():.4f}")
    return model.eval()


@torch.inference_mode()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    seed: int,
    max_new_tokens=64,
    batch_size: int = 256,
    progress=_no_progress,
) -> list[list[str]]:
    """n sampled completions per prompt (left-padded batched generation with a KV cache)."""
    torch.manual_seed(seed)
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    flat = [r for r in rendered for _ in range(n)]
    outs: list[str] = []
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(flat), batch_size):
            enc = tokenizer(
                flat[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            gen = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            progress("demo world: feedback samples", len(outs), len(flat))
    finally:
        tokenizer.padding_side = "right"
    return [outs[i * n : (i + 1) * n] for i in range(len(prompts))]


def outcome(answer: int, completion: str) -> dict[str, bool]:
    """Which parts of a completion are right: the accepted ending, the final number (whatever the ending)."""
    found = FINAL_RE.findall(completion)
    return {
        "correct": verify(answer, completion),
        "ending_ok": bool(ANSWER_RE.search(completion)),
        "number_ok": bool(found) and found[-1] == str(answer),
    }


def build_world(cfg: DemoWorldSpec, out: Path, log=print, progress=_no_progress) -> dict:
    """Train the SFT model, sample feedback, form pairs; write everything under `out`.
    `progress(phase, done, total)` follows the SFT steps and the sampling.

    Call it through `ensure_world`, which runs it in the fixed build environment (BUILD_ENV)."""
    t0 = time.time()
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    s = splits(cfg)
    texts = sft_texts(cfg, s.sft)
    model = train_sft(cfg, tokenizer, texts, log=log, progress=progress)
    samples = sample(
        model,
        tokenizer,
        [p.question for p in s.feedback],
        n=cfg.samples_per_prompt,
        temperature=cfg.temperature,
        seed=cfg.seed,
        progress=progress,
    )
    rng = random.Random(cfg.seed + 707)
    rows, tally = [], {"correct": 0, "ending_ok": 0, "number_ok": 0}
    for i, (p, outs) in enumerate(zip(s.feedback, samples, strict=True)):
        results = [outcome(p.answer, o) for o in outs]
        for r in results:
            for k in tally:
                tally[k] += r[k]
        labels = [r["correct"] for r in results]
        good = [o for o, ok in zip(outs, labels, strict=True) if ok]
        bad = [o for o, ok in zip(outs, labels, strict=True) if not ok]
        rows.append(
            {
                "id": f"arith-{i}",
                "prompt": p.question,
                "answer": p.answer,
                "samples": outs,
                "labels": labels,
                "chosen": rng.choice(good) if good and bad else None,
                "rejected": rng.choice(bad) if good and bad else None,
            }
        )
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_jsonl(out / "feedback.jsonl", rows)
    write_eval_files(out / "eval", cfg)
    n_samples = len(rows) * cfg.samples_per_prompt
    info = {
        "config": cfg.model_dump(),
        "version": VERSION,
        "key": world_key(cfg),
        "content_hash": content_hash(out, cfg),
        "sft_flawed": {
            "ending": sum("The result is" in c for _, c in texts) / len(texts),
            "sign": sum(
                c != p_.worked(flaw_ending="The result is" in c)
                for (_, c), p_ in zip(texts, s.sft, strict=True)
            )
            / len(texts),
        },
        "sample_rates": {k: v / n_samples for k, v in tally.items()},
        "n_prompts": len(rows),
        "n_pairs": sum(r["chosen"] is not None for r in rows),
        "build_s": round(time.time() - t0, 1),
        "build_env": {k: os.environ.get(k) for k in BUILD_ENV} | {"torch_threads": torch.get_num_threads()},
    }
    if (reference := REFERENCE_HASHES.get(info["key"])) is not None:
        info["reference_hash"], info["matches_reference"] = reference, reference == info["content_hash"]
        if not info["matches_reference"]:
            log(
                f"WARNING: this machine built demo world {info['key']} with content hash "
                f"{info['content_hash'][:16]}…, not the reference {reference[:16]}…: its numbers will differ "
                "from the published ones (different CPU family or library versions?)"
            )
    atomic_write_json(out / "world.json", info, sort_keys=False)
    log(
        f"demo world built: sample accuracy {info['sample_rates']['correct']:.3f}, {info['n_pairs']} pairs, "
        f"{info['build_s']}s, content hash {info['content_hash']}"
    )
    return info


def content_hash(folder: Path, cfg: DemoWorldSpec) -> str:
    """sha256 of what the world *is*: generator version, config, vocabulary, every weight tensor (name, dtype,
    shape, bytes) and every data file. File formats and library versions (config.json's
    transformers_version, tokenizer.json's layout) stay out of it."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    h.update(json.dumps({"version": VERSION, "config": cfg.model_dump(), "vocab": SPECIALS + CHARS}).encode())
    for f in sorted((folder / "model").glob("*.safetensors")):
        for name, t in sorted(load_file(f).items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.contiguous().numpy().tobytes())
    for f in [folder / "feedback.jsonl", *sorted((folder / "eval").glob("*.jsonl"))]:
        h.update(f"{f.relative_to(folder)}\n".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def world_hash(cfg: DemoWorldSpec) -> str:
    """The content hash of the world `cfg` (built if missing), as recorded at its build: for provenance."""
    return read_json(ensure_world(cfg) / "world.json")["content_hash"]


def ensure_world(cfg: DemoWorldSpec, log=print) -> Path:
    """The cached world folder; built once (locked, atomic rename) when missing, in a subprocess with the
    fixed build environment."""
    final = world_dir(cfg)
    if (final / "world.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "world.json").exists():
            return final
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log(f"building demo world {world_key(cfg)} (one thread, fixed environment) in {tmp}")
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very code
        env = {
            **os.environ,
            **BUILD_ENV,
            "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "kto_bench.demo.world", str(tmp), cfg.model_dump_json()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        _relay(proc.stdout, log)
        err = proc.stderr.read()
        if proc.wait() != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KtoBenchError(f"building the demo world {world_key(cfg)} failed:\n{err[-4000:]}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def _relay(lines, log) -> None:
    """The build's stdout: its progress records drive a progress display with ETA (one per phase), the
    other lines go to `log`."""
    with ExitStack() as phase_bar:
        phase, done, advance = None, 0, None
        for line in lines:
            if not line.startswith(PROGRESS):
                log(line.rstrip())
                continue
            name, n, total = line[len(PROGRESS) :].rstrip("\n").rsplit("|", 2)
            if name != phase:
                phase_bar.close()
                phase, done = name, 0
                advance = phase_bar.enter_context(progress_display(name, int(total)))
            advance(int(n) - done)
            done = int(n)


def world_of(model: ModelSpec) -> Path:
    """The built world folder of a demo model spec."""
    assert model.source == "demo" and model.world is not None
    return ensure_world(model.world)


def feedback_source(
    *, path: str | None = None, split: str = "train", limit: int | None = None, revision: str | None = None
) -> list[Pair]:
    """Preference pairs from a demo world's sampled, verifier-labelled feedback.

    `path` is a built world folder (the pipeline passes the model's own world) or a preset name; there is no
    default, so a new world never trains on another world's feedback."""
    if path is None:
        raise DataError(
            "demo_arith needs a demo world: the pipeline passes the model's (model.source: demo); "
            f"called directly, give path=<world folder> or a preset ({', '.join(DEMO_WORLDS)})"
        )
    folder = Path(path)
    if not (folder / "feedback.jsonl").exists():
        if path not in DEMO_WORLDS:
            raise DataError(f"demo_arith: {path!r} is neither a built demo world folder nor a preset")
        folder = ensure_world(world_config(path))
    pairs = []
    for r in read_jsonl(folder / "feedback.jsonl"):
        if r["chosen"] is not None:
            pairs.append(Pair(messages(("user", r["prompt"])), r["chosen"], r["rejected"], r["id"]))
    return pairs[:limit] if limit else pairs


def _main(argv: list[str]) -> None:
    """`python -m kto_bench.demo.world OUT CONFIG_JSON`: the build itself (ensure_world runs it)."""
    torch.set_num_threads(1)
    out, cfg = Path(argv[0]), DemoWorldSpec.model_validate_json(argv[1])
    build_world(
        cfg,
        out,
        log=lambda m: print(m, flush=True),
        progress=lambda phase, done, total: print(f"{PROGRESS}{phase}|{done}|{total}", flush=True),
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
