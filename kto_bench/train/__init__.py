"""Training engine: pure losses, log-prob kernels, the reference cache and the one training loop."""
