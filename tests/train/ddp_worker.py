"""Worker of tests/train/test_ddp.py: train the tiny fixture of test_loop.py in this process, alone or as
one process of a `torchrun` launch, and write what was logged (main process) to OUT_DIR/<method>.json.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py OUT_DIR GRAD_ACCUM

Besides the curves it records KTO's z0 check: each process's own KL estimate on its first microbatch
and the z0 the loss uses with the loop's cross-process reduce (`kl.json`, one entry per process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from kto_bench.demo.world import build_tokenizer, tiny_config
from kto_bench.methods import call_loss
from kto_bench.spec import expand, parse_spec
from kto_bench.train.loop import Context, _kl_reduce, batch_counts, kl_tensors, plan, train
from kto_bench.train.refcache import ReferenceCache, fill

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script by torchrun
from tests.tiny_data import preference_pairs, tokenized  # noqa: E402

TOK = build_tokenizer()
SPEC = """\
name: t
model: {{source: hub, name: x, dtype: float32}}
data: {{source: local_pairs, max_length: 48, max_prompt_length: 16}}
methods: [{{type: kto, beta: 0.5, z0_scope: step}}, {{type: dpo, beta: 0.5}}]
training: {{lr: 3.0e-3, precision: fp32, batch_size: 4, grad_accum: {grad_accum}, budget: {{rule: steps, value: 6}},
           checkpoint_every: 3, warmup_ratio: 0.0, schedule: constant}}
"""


def build(tmp: Path, method: str, grad_accum: int):
    run = next(r for r in expand(parse_spec(SPEC.format(grad_accum=grad_accum))) if r.method.type == method)
    data = tokenized(preference_pairs(), max_length=48, max_prompt_length=16, batch_size=4)
    torch.manual_seed(1)  # a reference that differs from the policy: KTO's KL is not zero from the start
    reference = AutoModelForCausalLM.from_config(tiny_config(len(TOK), hidden=32, layers=1))
    cache = ReferenceCache(tmp / "cache", "fixture-reference", "float32")
    fill(cache, reference, data.sequences, pad_id=TOK.pad_token_id, batch_size=16, device="cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(len(TOK), hidden=32, layers=1))
    return run, data, model, cache


def main(out: Path, grad_accum: int) -> None:
    acc = Accelerator(cpu=True)
    rank_dir = out / f"rank{acc.process_index}"
    for method in ("kto", "dpo"):
        run, data, model, cache = build(rank_dir, method, grad_accum)
        logged: list[dict] = []
        ctx = Context(
            run=run,
            data=data,
            ref=cache.lookup,
            hyper=run.method.loss_kwargs(),
            pad_id=TOK.pad_token_id,
            checkpoint_dir=rank_dir / f"ckpt-{method}",
            log=lambda step, m, logged=logged: logged.append(m),
            accelerator=acc,
        )
        train(model, ctx)
        if acc.is_main_process:
            (out / f"{method}.json").write_text(json.dumps(logged))
        if method == "kto":  # z0 with the loop's reduce, on this process's first microbatch after training
            p = plan(run, batch_counts(data, "binary"), None, acc.num_processes)
            b = p.order[acc.process_index]
            with torch.no_grad():
                kl, _ = kl_tensors(ctx.module, ctx, [b])
            n = len(data.binary_batches[b])
            zeros = torch.zeros(n)
            result = call_loss(
                "kto",
                {"policy_logps": zeros, "reference_logps": zeros, "desirable": zeros.bool(), **kl},
                beta=0.5,
                **_kl_reduce(acc),
            )
            local = float((kl["kl_policy_logps"] - kl["kl_reference_logps"]).mean())
            (out / f"kl{acc.process_index}.json").write_text(
                json.dumps({"local": local, "z0": float(result.kl)})
            )
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
