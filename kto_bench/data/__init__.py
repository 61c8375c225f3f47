"""Data: sources, canonical forms, matched corruption, tokenization (the demo world is kto_bench.demo)."""
