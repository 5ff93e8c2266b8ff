"""The learners: the agent seam and its registry (base.py), PPO and DQN, networks, the one update
path (learner.py), replay, and the plasticity strategies (plasticity/). The runtime that trains
them (config, loop, checkpoints, resume) lives in agents/runtime/."""
