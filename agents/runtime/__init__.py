"""The runtime: config loading, the training loop, run directories, logging, checkpoints and
resume. It drives an agent (agents/) on a task sequence (envs/) with observers (the monitor)."""
