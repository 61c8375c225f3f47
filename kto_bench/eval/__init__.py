"""Evaluation: the engine (generation, log-likelihood), lm-eval's tasks through it, AlpacaEval, serving.

`eval.run.run_evaluation` runs a spec's tasks on a loaded model and writes one TaskResult JSON + samples per
task; `eval.tasks` is the task registry. Importing this package is cheap (lm-eval and torch load lazily).
"""
