"""Data: sources, canonical forms, matched corruption, tokenization, the synthetic world."""
