"""Every shipped config loads and builds its envs; every task env passes gymnasium's checker."""

from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

from agents.runtime.config import CONFIG_DIR, load_config
from envs.factory import EnvFactory
from envs.tasks import TaskSequence

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_builds_its_envs(name):
    cfg = load_config(name)
    sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
    factory = EnvFactory(cfg.env, sequence)
    for task in sequence.tasks:
        env = factory.make_single(task)
        check_env(env, skip_render_check=True)
        assert env.observation_space == factory.observation_space
        env.close()
    envs = factory.make_vector(sequence.tasks[0], num_envs=2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, *factory.observation_space.shape)
    envs.close()


def test_differing_games_get_the_full_action_space():
    cfg = load_config("atari_cycle_ppo.yaml")
    factory = EnvFactory(cfg.env, TaskSequence.from_config(cfg.sequence, 0))
    assert factory.action_space.n == 18  # the games differ: the full action space


def test_permuted_observations_are_a_fixed_permutation():
    import numpy as np

    from envs.tasks import TaskSpec
    from envs.wrappers import PermuteObservation

    cfg = load_config("tiny.yaml")
    seq = TaskSequence([TaskSpec("MiniGrid-Empty-5x5-v0")], 8)
    plain = EnvFactory(cfg.env, seq).make_single(seq.tasks[0])
    permuted = PermuteObservation(EnvFactory(cfg.env, seq).make_single(seq.tasks[0]), seed=3)
    a, _ = plain.reset(seed=1)
    b, _ = permuted.reset(seed=1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a.reshape(-1)[permuted.permutation], b.reshape(-1))


def test_configs_dir_holds_the_documented_configs():
    names = set(CONFIGS)
    assert {"tiny.yaml", "minigrid_ppo.yaml", "atari_modes_ppo.yaml",
            "atari_cycle_ppo.yaml"} <= names
    assert Path(CONFIG_DIR / "minigrid_ppo.yaml").is_file()
