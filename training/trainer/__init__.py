"""The training run: typed configuration, run assembly and atomic checkpoints."""
