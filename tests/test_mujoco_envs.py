"""MuJoCo tasks (envs/mujoco.py): physics set on the compiled model and changed at the switch
step, seeded friction schedules (sequence.vary), and running normalisation whose statistics
persist across task switches, never move for probe envs, and leave logged returns raw."""

from types import SimpleNamespace

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from omegaconf import OmegaConf

from agents.errors import ConfigError
from agents.runtime.config import load_config
from agents.runtime.trainer import Trainer
from envs.config import EnvConfig
from envs.factory import EnvFactory
from envs.tasks import TaskSequence, TaskSpec, vary_values

SLIPPERY = TaskSpec("Ant-v5", physics={"friction": 0.5, "mass_scale": 2.0, "gravity_scale": 0.5})


def factory(*tasks: TaskSpec, switch_every: int = 8, **env) -> EnvFactory:
    env_cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig), {"num_envs": 2, **env})
    return EnvFactory(env_cfg, TaskSequence(list(tasks), switch_every))


def sequence(*overrides, seed: int = 1) -> TaskSequence:
    cfg = load_config("tiny.yaml", ["sequence.tasks=[{env_id: Ant-v5}]", f"seed={seed}",
                                    *overrides])
    return TaskSequence.from_config(cfg.sequence, cfg.seed)


def sub_envs(envs) -> list[gym.Env]:
    return [env.unwrapped for env in envs.unwrapped.envs]


def random_actions(envs, steps: int, seed: int = 0):
    """Gaussian actions as a policy samples them: float32, often outside the bounds."""
    rng = np.random.default_rng(seed)
    shape = (envs.num_envs, *envs.single_action_space.shape)
    return [rng.normal(0, 1.5, shape).astype(np.float32) for _ in range(steps)]


def test_a_physics_task_passes_gymnasiums_env_checker():
    env = factory(SLIPPERY).make_single(SLIPPERY)
    check_env(env, skip_render_check=True)  # rendering needs a display
    assert env.observation_space.dtype == np.float32 and env.observation_space.shape == (105,)
    _, _, _, _, info = env.step(np.full(8, 5.0, np.float32))  # clipped by the env, not refused
    assert info["reward_ctrl"] == pytest.approx(-0.5 * 8)  # ctrl cost of the clipped action (1s)
    assert SLIPPERY.name == "Ant-v5_friction0.5_gravity_scale0.5_mass_scale2"


def test_the_physics_is_set_in_the_model_and_differs_between_tasks():
    plain, heavy = TaskSpec("Hopper-v5"), TaskSpec("Hopper-v5", physics=SLIPPERY.physics)
    fac = factory(plain, heavy)
    info = fac.info
    assert isinstance(info.action_space, gym.spaces.Box) and info.layout.arch == "mlp"
    default, scaled = (fac.make_single(t).unwrapped.model for t in (plain, heavy))
    assert not np.all(default.geom_friction[:, 0] == default.geom_friction[0, 0])  # 1 and 0.9
    np.testing.assert_array_equal(scaled.geom_friction[:, 0], 0.5)  # every geom, floor too
    np.testing.assert_array_equal(scaled.geom_friction[:, 1:], default.geom_friction[:, 1:])
    np.testing.assert_allclose(scaled.body_mass, 2 * default.body_mass)
    np.testing.assert_allclose(scaled.body_inertia, 2 * default.body_inertia)
    np.testing.assert_allclose(scaled.body_subtreemass, 2 * default.body_subtreemass)
    np.testing.assert_allclose(scaled.opt.gravity, [0, 0, -9.81 / 2])


def test_the_friction_changes_at_the_switch_step_in_the_trainers_envs():
    seq = sequence("sequence.vary={friction: [1.0, 0.5, 2.0]}", "sequence.switch_every=64")
    assert [t.name for t in seq.tasks] == ["Ant-v5_friction1", "Ant-v5_friction0.5",
                                           "Ant-v5_friction2"]
    fac = EnvFactory(OmegaConf.merge(OmegaConf.structured(EnvConfig), {"num_envs": 2}), seq)
    trainer = SimpleNamespace(env_factory=fac)  # Trainer.make_envs needs no more
    seen = {}
    for step in (63, 64, 127, 128):
        envs = Trainer.make_envs(trainer, seq.segment_at(step))
        envs.reset(seed=0)
        for actions in random_actions(envs, 10):
            envs.step(actions)
        frictions = {c.friction[0] for env in sub_envs(envs) for c in env.data.contact}
        assert frictions, "the ants touch the floor within 10 steps"
        seen[step] = frictions
        envs.close()
    assert seen == {63: {1.0}, 64: {0.5}, 127: {0.5}, 128: {2.0}}


def test_a_floor_friction_below_the_bodys_changes_no_contact():
    """Why `friction` sets every geom: MuJoCo takes the larger of two geoms' frictions."""
    env = gym.make("Ant-v5")
    env.unwrapped.model.geom_friction[0, 0] = 0.5  # the floor alone
    floor = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    env.reset(seed=0)
    frictions = set()
    for action in np.random.default_rng(0).uniform(-1, 1, (20, 8)):
        env.step(action)
        contacts = env.unwrapped.data.contact
        assert all(floor in (c.geom1, c.geom2) for c in contacts)
        frictions |= {c.friction[0] for c in contacts}
    assert frictions == {1.0}


def test_the_log_uniform_schedule_is_seeded():
    spec = {"log_uniform": [0.02, 2.0], "count": 5, "seed": None}
    drawn = vary_values("f", spec, seed=3)
    expected = np.exp(np.random.default_rng(3).uniform(np.log(0.02), np.log(2.0), 5))
    assert drawn == list(expected) == vary_values("f", {**spec, "seed": 3}, seed=9)
    assert drawn != vary_values("f", spec, seed=4)
    many = np.array(vary_values("f", {**spec, "count": 4000}, seed=0))
    assert many.min() >= 0.02 and many.max() <= 2.0
    # uniform in log space: half below the geometric mean 0.2 (uniform in [0.02, 2]: 9%)
    assert np.mean(many < 0.2) == pytest.approx(0.5, abs=0.03)
    # seed null: the run's seed; the sequence holds the drawn values, in order
    vary = "sequence.vary={friction: {log_uniform: [0.02, 2.0], count: 5, seed: null}}"
    tasks = sequence(vary, seed=3).tasks
    assert [t.physics["friction"] for t in tasks] == drawn
    assert [t.physics for t in sequence(vary, seed=3).tasks] == [t.physics for t in tasks]
    assert [t.name for t in tasks][0] == f"Ant-v5_friction{drawn[0]:.4g}"


def test_a_varied_task_keeps_its_base_and_repeated_values_get_names_of_their_own():
    tasks = sequence("sequence.tasks=[{env_id: Ant-v5, name: slip, physics: {mass_scale: 2},"
                     " kwargs: {include_cfrc_ext_in_observation: false}}]",
                     "sequence.vary={friction: [1, 0.5, 1]}", "sequence.cycles=2").tasks
    assert [t.name for t in tasks] == ["slip_friction1", "slip_friction0.5", "slip_friction1_2"]
    assert all(t.physics["mass_scale"] == 2 and t.kwargs for t in tasks)
    assert factory(*tasks).observation_space.shape == (27,)  # without contact forces


@pytest.mark.parametrize("overrides, message", [
    (["sequence.tasks=[{env_id: Ant-v5}, {env_id: Hopper-v5}]", "sequence.vary={friction: [1]}"],
     "sequence.vary needs exactly one task in sequence.tasks"),
    (["sequence.vary={friction: []}"], "sequence.vary.friction: list at least one value"),
    (["sequence.vary={friction: [1, 0]}"], "every value must be a number > 0, got 0"),
    (["sequence.vary={friction: {log_uniform: [0, 2], count: 2}}"], "0 < low <= high"),
    (["sequence.vary={friction: {log_uniform: [2, 1], count: 2}}"], "0 < low <= high"),
    (["sequence.vary={friction: {log_uniform: [1, 2], count: 0}}"],
     "sequence.vary.friction.count must be a positive integer, got 0"),
    (["sequence.vary={friction: {log_uniform: [1, 2], n: 2}}"], "expected {log_uniform"),
    (["sequence.vary={friction: [1], mass_scale: [2]}"], "vary one physics key"),
    (["sequence.vary={frction: [1, 2]}"], "unknown physics ['frction']: the mujoco family sets "
                                          "only friction, mass_scale, gravity_scale"),
    (["sequence.tasks=[{env_id: Ant-v5, physics: {gravity: 2}}]"], "unknown physics ['gravity']"),
    (["sequence.tasks=[{env_id: Ant-v5, physics: {friction: -1}}]"],
     "physics.friction must be > 0, got -1.0"),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0, physics: {friction: 1}}]"],
     "the minigrid family has no physics model to set"),
    (["sequence.tasks=[{env_id: CartPole-v1, physics: {friction: 1}}]"],
     "the gymnasium family has no physics model to set"),
    (["sequence.tasks=[{env_id: Ant-v3}]"], "unknown MuJoCo env 'Ant-v3' (known: Ant-v4, Ant-v5"),
    (["env.normalize_obs=true", "env.clip_obs=0"],
     "env.clip_obs must be > 0, got 0"),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0}]", "env.normalize_obs=true"],
     "env.normalize_obs normalises float vector observations"),
])
def test_bad_physics_and_schedules_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        cfg = load_config("tiny.yaml", ["sequence.tasks=[{env_id: Ant-v5}]", *overrides])
        EnvFactory(cfg.env, TaskSequence.from_config(cfg.sequence, cfg.seed))
    assert message in str(error.value) and "\n" not in str(error.value)


NORMALIZED = {"normalize_obs": True, "normalize_reward": True}


def stats(fac) -> dict:
    return {k: {n: np.array(v) for n, v in part.items()}
            for k, part in fac.statistics.state_dict().items()}


def assert_same_stats(a: dict, b: dict, same: bool = True):
    flat = lambda s: np.concatenate([np.ravel(s[k][n]) for k in s for n in s[k]])  # noqa: E731
    assert np.array_equal(flat(a), flat(b)) == same


def test_the_statistics_persist_across_segments_and_probes_leave_them_alone():
    first, second = TaskSpec("Hopper-v5"), TaskSpec("Hopper-v5", physics={"friction": 0.5})
    fac = factory(first, second, **NORMALIZED)
    initial = stats(fac)
    envs = fac.make_vector(first, training=True)
    envs.reset(seed=0)
    for actions in random_actions(envs, 30):
        envs.step(actions)
    after_first = stats(fac)
    assert_same_stats(after_first, initial, same=False)
    assert after_first["obs"]["count"] == pytest.approx(31 * 2, abs=1e-3)  # reset and 30 steps
    probe = fac.make_vector(second)  # the spectral monitor's kind
    probe_obs, _ = probe.reset(seed=5)
    for actions in random_actions(probe, 30, seed=1):
        probe.step(actions)
    assert_same_stats(stats(fac), after_first)  # untouched by the probe
    envs.close()
    envs = fac.make_vector(second, training=True)  # the next segment: the same statistics
    obs, _ = envs.reset(seed=5)
    assert stats(fac)["obs"]["count"] == pytest.approx(32 * 2, abs=1e-3)
    assert not np.array_equal(obs, probe_obs)  # the probe's: by the statistics before
    envs.close()
    probe.close()


def test_logged_returns_stay_raw():
    task = TaskSpec("Hopper-v5")
    raw_envs, envs = factory(task).make_vector(task), factory(task, **NORMALIZED).make_vector(
        task, training=True)
    raw_envs.reset(seed=3)
    envs.reset(seed=3)
    sums, raw_returns, logged = np.zeros(2), [], []
    for actions in random_actions(envs, 120):
        _, raw_reward, term, trunc, raw_info = raw_envs.step(actions)
        _, reward, _, _, info = envs.step(actions)
        assert not np.allclose(reward, raw_reward)
        sums += raw_reward
        for i in np.flatnonzero(term | trunc):
            raw_returns.append(sums[i])
            sums[i] = 0
            logged.append(info["episode"]["r"][i])
            assert info["episode"]["r"][i] == raw_info["episode"]["r"][i]
    assert len(logged) >= 2
    np.testing.assert_allclose(logged, raw_returns, rtol=1e-6)
    raw_envs.close()
    envs.close()


def test_final_observations_are_normalised_too():
    """SAME_STEP autoreset: the ended envs' last observations, in info, on the same scale."""
    task = TaskSpec("Hopper-v5")
    raw_envs, fac = factory(task).make_vector(task), factory(task, normalize_obs=True)
    envs = fac.make_vector(task, training=True)
    raw_envs.reset(seed=3)
    envs.reset(seed=3)
    for actions in random_actions(envs, 120):
        _, _, term, trunc, raw_info = raw_envs.step(actions)
        _, _, _, _, info = envs.step(actions)
        if np.any(term | trunc):
            break
    rms = fac.statistics.obs
    for i in np.flatnonzero(term | trunc):
        expected = np.clip((raw_info["final_obs"][i] - rms.mean) / np.sqrt(rms.var + 1e-8),
                           -10, 10).astype(np.float32)
        np.testing.assert_array_equal(info["final_obs"][i], expected)
    raw_envs.close()
    envs.close()
