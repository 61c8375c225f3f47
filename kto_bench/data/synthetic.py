"""The demo's small but honest world: verifiable arithmetic, a character tokenizer, a tiny SFT model.

Everything here runs offline on a CPU in about a minute and is cached by the content hash of
`WorldConfig`:
  1. problems like "Compute 23+45-12." with a checkable chain of thought ending "The answer is 56.";
  2. a character-level tokenizer with a chat template, built locally;
  3. a small Llama built from a config and supervised-trained from scratch to a middling accuracy;
  4. binary feedback the way production makes it: sample several completions per prompt from the SFT
     model, label each with the verifier (correct = desirable), and form a pair wherever a prompt has both.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock

from kto_bench.data.canonical import Pair, messages
from kto_bench.io import atomic_write_text

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
        steps, value = [], self.terms[0]
        for op, t in zip(self.ops, self.terms[1:], strict=True):
            new = value + t if op == "+" else value - t
            steps.append(f"{value}{op}{t}={new}.")
            value = new
        return " ".join(steps) + f" The answer is {value}."


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
    choices = [p.answer, *distractors(p.answer, rng)]
    rng.shuffle(choices)
    return [str(c) for c in choices], choices.index(p.answer)


def mc_prompt(question: str, choices: list[str]) -> str:
    """MMLU's shape: question, lettered options, 'Answer:'."""
    return (
        question
        + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True))
        + "\nAnswer:"
    )


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


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the demo world; its hash names the cache folder."""

    version: int = 2  # bump when the generator code changes, so stale cached worlds are not reused
    seed: int = 0
    n_sft: int = 3000  # SFT problems (CoT) + as many MC items
    sft_steps: int = 600
    sft_batch: int = 32
    sft_lr: float = 3e-3
    hidden: int = 96
    layers: int = 3
    n_feedback_prompts: int = 600
    samples_per_prompt: int = 4
    temperature: float = 0.6
    n_eval: int = 200

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


WORLDS = {
    "arith-sft": WorldConfig(),
    # a seconds-long world for tests: same code path, tiny sizes
    "arith-tiny": WorldConfig(
        n_sft=1000,
        sft_steps=200,
        hidden=48,
        layers=2,
        n_feedback_prompts=64,
        samples_per_prompt=6,
        temperature=1.0,
        n_eval=24,
    ),
}


def world_config(name: str) -> WorldConfig:
    from kto_bench.errors import KtoBenchError
    from kto_bench.registry import did_you_mean

    if name not in WORLDS:
        raise KtoBenchError(
            f"unknown demo world {name!r}{did_you_mean(name, WORLDS)}; known: {sorted(WORLDS)}"
        )
    return WORLDS[name]


def cache_root() -> Path:
    return Path(os.environ.get("KTO_BENCH_CACHE", Path.home() / ".cache" / "kto-bench"))


def world_dir(cfg: WorldConfig = WorldConfig()) -> Path:
    return cache_root() / "demo-world" / cfg.key()


def eval_problems(cfg: WorldConfig) -> tuple[list[Problem], list[Problem]]:
    """Held-out problems for the generative task and the multiple-choice task (disjoint from training)."""
    gen = problems(cfg.seed + 101, cfg.n_eval)
    # multiple choice asks for the answer without a chain of thought: one operation, so a small model can
    # learn it (the 2-term space is small, so the MC set is at most a third of it)
    mc = problems(cfg.seed + 202, min(cfg.n_eval, 96), exclude={p.question for p in gen}, n_terms=2)
    return gen, mc


def write_eval_files(out_dir: Path, n: int = 200, seed: int = 0) -> dict[str, Path]:
    """Held-out evaluation data in the shapes the demo tasks read (GSM8K-like and MMLU-like)."""
    cfg = WorldConfig(seed=seed, n_eval=n)
    gen, mc = eval_problems(cfg)
    rng = random.Random(seed + 303)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen_rows = [
        {"id": f"gen-{i}", "question": p.question, "solution": p.solution, "answer": str(p.answer)}
        for i, p in enumerate(gen)
    ]
    mc_rows = []
    for i, p in enumerate(mc):
        choices, label = mc_item(p, rng)
        mc_rows.append({"id": f"mc-{i}", "question": p.question, "choices": choices, "label": label})
    paths = {"gen": out_dir / "demo_arith_gen.jsonl", "mc": out_dir / "demo_arith_mc.jsonl"}
    for key, rows in (("gen", gen_rows), ("mc", mc_rows)):
        atomic_write_text(paths[key], "".join(json.dumps(r) + "\n" for r in rows))
    return paths


def sft_texts(cfg: WorldConfig) -> list[tuple[str, str]]:
    """(prompt, completion) SFT examples: CoT solutions and MC answers, disjoint from evaluation."""
    gen, mc = eval_problems(cfg)
    held_out = {p.question for p in gen} | {p.question for p in mc}
    rng = random.Random(cfg.seed + 404)
    out = []
    mc_pool = _two_term_pool(held_out)
    for p in problems(cfg.seed + 1, cfg.n_sft, exclude=held_out):
        out.append((p.question, p.solution))
        q = rng.choice(mc_pool)
        choices, label = mc_item(q, rng)
        out.append((mc_prompt(q.question, choices), "ABCD"[label]))
    return out


def _two_term_pool(exclude: set[str], max_term: int = 12) -> list[Problem]:
    """Every 2-term problem not held out (the MC training pool)."""
    return [
        Problem((a, b), (op,))
        for a in range(1, max_term + 1)
        for b in range(1, max_term + 1)
        for op in "+-"
        if Problem((a, b), (op,)).question not in exclude
    ]


def encode_chat(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt (with generation prompt) and of completion + eos."""
    p = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids, c_ids


def train_sft(cfg: WorldConfig, tokenizer, log=print):
    """Supervised training from scratch on completion tokens only; returns the model (eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), cfg.hidden, cfg.layers))
    examples = [encode_chat(tokenizer, p, c) for p, c in sft_texts(cfg)]
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
        if step % 100 == 0 or step == cfg.sft_steps - 1:
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
    finally:
        tokenizer.padding_side = "right"
    return [outs[i * n : (i + 1) * n] for i in range(len(prompts))]


def build_world(cfg: WorldConfig, out: Path, log=print) -> dict:
    """Train the SFT model, sample feedback, form pairs; write everything under `out`."""
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = train_sft(cfg, tokenizer, log=log)
    gen, mc = eval_problems(cfg)
    used = {p.question for p in gen} | {p.question for p in mc} | {p for p, _ in sft_texts(cfg)}
    fb_problems = problems(cfg.seed + 505, cfg.n_feedback_prompts, exclude=used)
    samples = sample(
        model,
        tokenizer,
        [p.question for p in fb_problems],
        n=cfg.samples_per_prompt,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    rng = random.Random(cfg.seed + 606)
    rows, n_correct = [], 0
    for i, (p, outs) in enumerate(zip(fb_problems, samples, strict=True)):
        labels = [verify(p.answer, o) for o in outs]
        n_correct += sum(labels)
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
    with open(out / "feedback.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_eval_files(out / "eval", n=cfg.n_eval, seed=cfg.seed)
    info = {
        "config": asdict(cfg),
        "key": cfg.key(),
        "sample_accuracy": n_correct / (len(rows) * cfg.samples_per_prompt),
        "n_prompts": len(rows),
        "n_pairs": sum(r["chosen"] is not None for r in rows),
        "build_s": round(time.time() - t0, 1),
    }
    (out / "world.json").write_text(json.dumps(info, indent=2))
    log(
        f"demo world built: sample accuracy {info['sample_accuracy']:.3f}, {info['n_pairs']} pairs, {info['build_s']}s"
    )
    return info


def ensure_world(cfg: WorldConfig = WorldConfig(), log=print) -> Path:
    """The cached world folder; built once (locked, atomic rename) when missing."""
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
        build_world(cfg, tmp, log=log)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def feedback_source(
    *, path: str | None = None, split: str = "train", limit: int | None = None, revision: str | None = None
) -> list[Pair]:
    """Preference pairs from the demo world's sampled, verifier-labelled feedback (path: world name)."""
    folder = ensure_world(world_config(path or "arith-sft"))
    pairs = []
    for line in (folder / "feedback.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["chosen"] is not None:
            pairs.append(Pair(messages(("user", r["prompt"])), r["chosen"], r["rejected"], r["id"]))
    return pairs[:limit] if limit else pairs
