"""The strategy catalogue as users meet it: config, errors, hooks in every agent, combinations."""

import collections
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training import run

from agents.catalogue import AGENTS
from agents.errors import ConfigError
from agents.plasticity import STRATEGIES, build_strategies, strategies_markdown, strategy_set_name
from agents.plasticity.base import Strategy, StrategyStack, combination_error
from agents.plasticity.listing import README_MARKERS
from agents.run_view import Observer
from agents.runtime.config import CONFIG_DIR
from train import cli

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = sorted(STRATEGIES)
# Settings that make schedule-driven strategies act within a few updates.
ACTIVE = {"redo": {"every_steps": 2, "threshold": 0.5}, "cbp": {"maturity": 2,
          "replacement_rate": 0.2}, "reset": {"every_steps": 3}, "shrink_perturb": {"when": "step"},
          "effective_rank": {"er_batch": 2}, "isometry": {"samples": 8},
          "adamo": {"samples": 8}}
SHORT = {"ppo": ["ppo.num_steps=8", "ppo.update_epochs=1"],
         "dqn": ["dqn.learning_starts=32", "dqn.log_every=32", "dqn.batch_size=16"]}


def test_the_issue_catalogue_is_registered():
    assert {"l2", "l2_init", "effective_rank", "er_l2", "shrink_perturb", "reset", "redo", "cbp",
            "crelu", "layer_norm", "parseval", "spectral_reg", "isometry", "adamo", "c_chain",
            "trac", "normalize_project", "weight_decay", "sam"} <= set(STRATEGIES)


def test_pliable_strategies_lists_settings_defaults_and_papers(capsys):
    assert cli(["strategies"]) == 0
    out = capsys.readouterr().out
    for name, cls in STRATEGIES.items():
        assert f"\n{name}\n" in out and cls.paper in out
    assert "plasticity.redo.threshold: float = 0.025" in out
    assert "plasticity.er_l2.weight_decay.coef: float = 0.001" in out
    assert "plasticity.reset.layers: list[str] = ['heads']" in out


def test_the_strategy_tables_have_one_row_per_strategy(capsys):
    """Both tables (the manual's, `--markdown`; the README's, `--compact`) list every registered
    strategy once, in name order, with no bare | splitting a cell (tests/test_docs.py checks
    that README.md and docs/strategies.md hold them)."""
    for flags, columns in ((["--markdown"], 4), (["--markdown", "--compact"], 3)):
        assert cli(["strategies", *flags]) == 0
        rows = capsys.readouterr().out.splitlines()[2:]
        assert [row.split(" | ")[0] for row in rows] == [f"| `{name}`" for name in CATALOGUE]
        assert all(row.count(" | ") == columns - 1 for row in rows)


def test_the_tables_are_rewritten_between_their_markers_only(tmp_path):
    start, end = README_MARKERS
    readme, page = tmp_path / "README.md", tmp_path / "strategies.md"
    for path in (readme, page):
        path.write_text(f"# intro\n{start}| stale |\n{end}\nafter\n")
    assert cli(["strategies", "--markdown", "--readme", str(readme), "--docs", str(page)]) == 0
    assert readme.read_text() == f"# intro\n{start}{strategies_markdown(True)}{end}\nafter\n"
    assert page.read_text() == f"# intro\n{start}{strategies_markdown()}{end}\nafter\n"
    readme.write_text("no markers\n")
    assert cli(["strategies", "--markdown", "--readme", str(readme)]) == 2
    with pytest.raises(SystemExit, match="2"):  # --readme goes with --markdown: argparse's usage
        cli(["strategies", "--readme", str(page)])


@pytest.mark.parametrize("settings,message", [
    ({"redo": {"treshold": 0.1}},
     "plasticity.redo.treshold: unknown setting (settings: threshold, every_steps, batch_size)"),
    ({"redo": {"threshold": "high"}}, "plasticity.redo.threshold: Value 'high'"),
    ({"er_l2": {"weight_decay": {"coeff": 1.0}}},
     "plasticity.er_l2.weight_decay.coeff: unknown setting"),
    ({"l2": 0.1}, "plasticity.l2: expected a mapping of settings"),
    ({"nope": {}}, "plasticity.nope: unknown strategy 'nope'"),
])
def test_bad_settings_name_the_key_and_the_allowed_ones(settings, message):
    with pytest.raises(ConfigError) as error:
        build_strategies(OmegaConf.create(settings))
    assert message in str(error.value)


def test_two_optimizer_replacements_are_refused():
    class Replacer(Strategy):
        replaces_optimizer = True

    first, second = Replacer(None), Replacer(None)
    first.name, second.name = "adamo", "other"
    with pytest.raises(ConfigError, match="adamo, other both replace the optimizer"):
        StrategyStack([first, second])


def test_run_names_carry_the_sorted_set_of_active_strategies():
    assert strategy_set_name({"redo": {}, "l2": {"coef": 1.0}, "crelu": None}) == "l2+redo"
    assert strategy_set_name({}) == "none"


def tiny(tmp_path, agent, *overrides):
    from agents.runtime.config import load_config

    path = f"tiny_{agent}.yaml" if (CONFIG_DIR / f"tiny_{agent}.yaml").exists() else "tiny.yaml"
    return load_config(path, [f"agent={agent}", f"runs_root={tmp_path}", "print_every=1000",
                              "sequence.switch_every=64", *SHORT.get(agent, []), *overrides])


class Recorder(Strategy):
    """Counts every hook it receives."""

    def __init__(self, settings):
        super().__init__(settings)
        self.calls = collections.Counter()
        self.switches, self.batch_sizes, self.feature_names = [], set(), set()

    def configure_network(self, spec):
        self.calls["configure_network"] += 1

    def configure_optimizer(self, factory):
        self.calls["configure_optimizer"] += 1
        return factory

    def setup(self, ctx):
        self.calls["setup"] += 1

    def loss_penalty(self, step):
        self.calls["loss_penalty"] += 1
        assert step.loss.requires_grad
        self.batch_sizes.add(step.obs.shape[0])
        self.feature_names |= set(step.features)

    def after_optimizer_step(self, step):
        self.calls["after_optimizer_step"] += 1

    def after_update(self, ctx):
        self.calls["after_update"] += 1

    def on_task_switch(self, ctx, prev, nxt):
        self.calls["on_task_switch"] += 1
        self.switches.append((prev.index, nxt.index, ctx.global_step))

    def metrics(self):
        self.calls["metrics"] += 1
        return {}


class IterationCounter(Observer):
    iterations = 0

    def after_iteration(self, run):
        self.iterations += 1


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_every_agent_calls_every_hook_the_expected_number_of_times(agent, tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES, "recorder", Recorder)
    counter = IterationCounter()
    two_updates_per_train_step = ["dqn.replay_ratio=0.5"] if agent == "dqn" else []
    cfg = tiny(tmp_path, agent, "plasticity.recorder={}", *two_updates_per_train_step)
    trainer = run(cfg, tmp_path / "log", [counter])
    recorder = trainer.strategies.strategies[0]
    ctx, calls = trainer.ctx, recorder.calls
    assert set(calls) == {"configure_network", "configure_optimizer", "setup", "loss_penalty",
                          "after_optimizer_step", "after_update", "on_task_switch", "metrics"}
    assert calls["configure_network"] == calls["configure_optimizer"] == calls["setup"] == 1
    assert calls["loss_penalty"] == calls["after_optimizer_step"] == ctx.update_count > 0
    assert calls["after_update"] == ctx.iteration > 0
    assert calls["metrics"] == counter.iterations
    assert recorder.switches == [(0, 1, 64), (1, 2, 128)]
    assert recorder.feature_names == set(trainer.agent.network.blocks)
    if agent == "ppo":  # 3 tasks × 64 steps / (4 envs × 8 steps) iterations × 1 epoch × 4 mb
        assert counter.iterations == ctx.iteration == 6
        assert ctx.update_count == 6 * 1 * 4 and recorder.batch_sizes == {8}
    if agent == "dqn":  # a train step every 4 env steps from step 32 to 192: 41, 2 updates each
        assert ctx.iteration == 41
        assert ctx.update_count == 41 * 2 and recorder.batch_sizes == {16}


@pytest.mark.parametrize("first,second", list(itertools.combinations(CATALOGUE, 2)))
def test_every_pair_of_strategies_trains_together(first, second, tmp_path):
    settings = {name: ACTIVE.get(name, {}) for name in (first, second)}
    if combination_error([STRATEGIES[first], STRATEGIES[second]]):  # refused by design
        with pytest.raises(ConfigError) as error:
            build_strategies(OmegaConf.create(settings))
        assert "\n" not in str(error.value)
        return
    cfg = tiny(tmp_path, "ppo", "sequence.switch_every=32", "sequence.tasks=[{env_id: "
               "MiniGrid-Empty-5x5-v0}, {env_id: MiniGrid-Empty-5x5-v0, permute_obs: 3}]")
    cfg.plasticity = settings
    trainer = run(cfg, tmp_path / "log")
    assert trainer.ctx.update_count == 8
    assert all(torch.isfinite(p).all() for p in trainer.agent.network.parameters())


@pytest.mark.parametrize("agent", sorted(AGENTS))
@pytest.mark.parametrize("name", CATALOGUE)
def test_every_strategy_trains_with_every_agent(name, agent, tmp_path):
    cfg = tiny(tmp_path, agent)
    cfg.plasticity = {name: ACTIVE.get(name, {})}
    trainer = run(cfg, tmp_path / "log")
    assert trainer.ctx.update_count > 0
    assert all(torch.isfinite(p).all() for p in trainer.agent.network.parameters())
    events = EventAccumulator(str(tmp_path / "log"), size_guidance={"scalars": 0})
    events.Reload()  # its own scalars (penalty or metrics) show the strategy at work
    assert any(tag.startswith(f"plasticity/{name}/") for tag in events.Tags()["scalars"])


def test_same_seed_same_run_with_stochastic_strategies(tmp_path):
    plasticity = {"redo": ACTIVE["redo"], "shrink_perturb": ACTIVE["shrink_perturb"],
                  "c_chain": {}, "reset": {"layers": ["all"], "at_switch": True}}
    params = []
    for attempt in ("a", "b"):
        cfg = tiny(tmp_path / attempt, "ppo")
        cfg.plasticity = plasticity
        params.append([p.detach().clone() for p in run(cfg, tmp_path / attempt).agent.network
                       .parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_cli_run_logs_strategy_metrics_and_names_the_run_by_its_strategies(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "tiny", f"runs_root={tmp_path}",
         "sequence.switch_every=64", "ppo.num_steps=8", "plasticity.l2.coef=1e-4",
         "plasticity.redo={every_steps: 4}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "tiny").iterdir()
    assert run_dir.name.startswith("l2+redo__s1__")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"plasticity/l2/penalty", "plasticity/redo/reset_units",
            "plasticity/redo/dormant_fraction"} <= tags


def test_bad_setting_is_one_line_and_exit_2(tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path}", "plasticity.reset={layers: [fc9]}"]
    line = assert_one_line_exit_2(argv, "unknown layer 'fc9'", tmp_path)
    assert line == ("error: plasticity.reset.layers: unknown layer 'fc9' "
                    "(allowed: conv1, conv2, conv3, fc1, heads, all)")
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("name", ["l2_init", "cbp", "normalize_project", "spectral_reg", "trac",
                                  "sam"])
def test_strategy_state_survives_a_state_dict_round_trip(name):
    from strategy_helpers import make_learner, optimize, value_loss

    trained, fresh = make_learner({name: {}}, seed=0), make_learner({name: {}}, seed=1)
    optimize(trained, steps=3, loss_fn=value_loss)
    state = trained.strategies.state_dict()
    fresh.strategies.load_state_dict(state)
    reloaded = fresh.strategies.state_dict()

    def flat(tree):
        if isinstance(tree, dict):
            return [x for key in sorted(tree) for x in flat(tree[key])]
        if isinstance(tree, (list, tuple)):
            return [x for item in tree for x in flat(item)]
        return [torch.as_tensor(tree)]

    assert state.keys() == reloaded.keys() == {name}
    assert all(torch.equal(a, b) for a, b in zip(flat(state), flat(reloaded), strict=True))
