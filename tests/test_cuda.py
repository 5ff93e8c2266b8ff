"""device=cuda: the same code trains on a GPU (skipped on machines without one)."""

import pytest
import torch
from training import train_once

from agents.runtime.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("config", ["tiny.yaml", "tiny_dqn.yaml"])
def test_a_run_trains_on_cuda_with_the_monitor(tiny_cfg, tmp_path, config):
    params, returns = train_once(tiny_cfg("device=cuda", "monitor.enabled=true", path=config),
                                 tmp_path / "logs")
    assert returns  # episodes ran and were logged
    assert all(p.is_cuda and torch.isfinite(p).all() for p in params.values())


def test_a_ppo_update_on_cuda_matches_the_cpu_one(tiny_cfg):
    """The same rollout batch and minibatch order: losses and parameters to float32 round-off."""
    results = []
    for device in ("cpu", "cuda"):
        trainer = Trainer(tiny_cfg(f"device={device}"))
        agent = trainer.agent
        envs = trainer.env_factory.make_vector(trainer.sequence.tasks[0])
        agent.begin_task(envs, seed=3)
        if results:  # act as the CPU agent did: the same batch on this device
            agent.network.load_state_dict(results[0][2])
            batch = results[0][3].index(torch.arange(len(results[0][3])))
            batch = type(batch)(*(getattr(batch, f).to(device) for f in batch.__dataclass_fields__))
        else:
            batch, _, _ = agent.rollout(envs, agent.next_obs, agent.next_done, 16)
        envs.close()
        start = {k: v.cpu().clone() for k, v in agent.network.state_dict().items()}
        stats = agent.update(batch, torch.Generator().manual_seed(0))
        results.append(({k: v.cpu() for k, v in agent.network.state_dict().items()},
                        {k: float(v) for k, v in stats.items()}, start, batch))
    (cpu_params, cpu_stats, _, _), (gpu_params, gpu_stats, _, _) = results
    for key, value in cpu_stats.items():
        assert gpu_stats[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    for key, value in cpu_params.items():
        torch.testing.assert_close(gpu_params[key], value, rtol=1e-4, atol=1e-5)
