"""The spectral monitor: a pure observer (bitwise), correct against a dense float64 Hessian of the
agent's own loss, and its files, TensorBoard tags and console lines hold what it computed."""

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.catalogue import AGENTS
from agents.errors import ConfigError
from agents.networks import Network, NetworkSpec, nature_cnn
from agents.policies import log_prob_and_entropy
from agents.run_view import Observer
from agents.runtime.config import load_config, preset_overrides, to_yaml
from agents.runtime.launch import run_training
from agents.runtime.trainer import Trainer
from analysis.monitor.measure import (
    Measurement,
    eps_rank_rel,
    heads_output_fn,
    measure_spectrum,
    plasticity_metrics,
)
from analysis.monitor.observer import SpectralMonitor
from analysis.monitor.outputs import density_figure
from analysis.spectral.features import ntk_rank
from analysis.spectral.hessian import eps_rank_he2025, flatten_params, unflatten_params
from analysis.study.grid_config import load_bench

TINY = {"ppo": "tiny.yaml", "dqn": "tiny_dqn.yaml"}  # the agent's own tiny config
SHORT = ("sequence.switch_every=512", "ppo.num_steps=32")
FAST_MONITOR = ("monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
                "monitor.lanczos_steps=12", "monitor.ggn_steps=12", "monitor.density_probes=2",
                "monitor.density_steps=8", "monitor.trace_probes=4", "monitor.ntk_samples=8",
                "monitor.metrics_every=16")
CARTPOLE = ("sequence.tasks=[{env_id: CartPole-v1}]", "network.arch=mlp",
            "network.hidden_sizes=[6]", "monitor.float64=true", "monitor.top_k=5",
            "monitor.lanczos_steps=100", "monitor.trace_probes=30")


class FinalState(Observer):
    def on_run_end(self, run):
        self.params = {k: v.clone() for k, v in run.agent.network.state_dict().items()}
        self.optimizer = copy.deepcopy(run.agent.learner.optimizer.state_dict())


def train(cfg):
    """Train through the CLI's path; returns (run dir, console text, final state)."""
    final, stream = FinalState(), io.StringIO()
    assert run_training(cfg, [final], stream) == 0
    (run_dir,) = [path.parent for path in Path(cfg.runs_root).rglob("config.yaml")]
    return run_dir, stream.getvalue(), final


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                        "images": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("pre_batch", ["fresh", "last"])
@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_monitor_is_a_pure_observer(agent, pre_batch, tiny_cfg, tmp_path):
    """Same seed, monitor off and on (every measurement, periodic ones and feature metrics, `pre`
    on a fresh rollout or on the last batch): identical parameters, optimizer state and
    episode returns."""
    off_dir, _, off = train(tiny_cfg(*SHORT, f"runs_root={tmp_path / 'off'}", path=TINY[agent]))
    on_dir, console, on = train(tiny_cfg(*SHORT, *FAST_MONITOR, "monitor.every_steps=256",
                                         f"monitor.pre_batch={pre_batch}",
                                         f"runs_root={tmp_path / 'on'}", path=TINY[agent]))
    spectra = on_dir / "spectra"  # every task measured at its end as at its start
    assert len(list(spectra.glob("switch_*_pre.npz"))) == len(list(spectra.glob("*_post.npz")))
    assert "spectrum @" in console and list((on_dir / "spectra").glob("step_*.npz"))
    assert any(t.startswith("plasticity/erank/") for t in events(on_dir).Tags()["scalars"])
    for name, value in off.params.items():
        assert torch.equal(value, on.params[name]), name
    for index, state in off.optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(value, on.optimizer["state"][index][key]), (index, key)
    returns = [[(e.step, e.value) for e in events(d).Scalars("charts/episodic_return")]
               for d in (off_dir, on_dir)]
    assert returns[0] and returns[0] == returns[1]


def test_a_dqn_task_is_measured_only_on_its_own_training_batches(tiny_cfg, tmp_path):
    """The buffer flushed at each switch, a DQN learns again only learning_starts (600) steps into
    each 1,024-step task: before that no batch of the new task exists, and no measurement may
    take the old task's last one for it."""
    run_dir, _, _ = train(tiny_cfg(*FAST_MONITOR, "monitor.every_steps=256",
                                   "dqn.flush_buffer_at_switch=true", "dqn.learning_starts=600",
                                   f"runs_root={tmp_path}", path="tiny_dqn.yaml"))
    periodic = sorted(p.stem for p in (run_dir / "spectra").glob("step_*.npz"))
    assert periodic == [f"step_{step:09d}" for step in (768, 1792, 2816)]


def dense_hessian_of_agent_loss(agent, batch):
    """The agent's loss through a float64 copy of its network, differentiated twice densely."""
    network = copy.deepcopy(agent.network).double()
    like = {name: p.detach() for name, p in network.named_parameters()}

    def loss_of(vector):
        params = unflatten_params(vector, like)
        forward = lambda obs: torch.func.functional_call(  # noqa: E731
            network, params, (obs,), {"return_features": True})
        return agent.loss(batch, forward)[0]

    return torch.autograd.functional.hessian(loss_of, flatten_params(like)), network, like


# A Gaussian PPO: one-unit actions, a separate actor and critic of 4 units, the log-std head.
PENDULUM = ("sequence.tasks=[{env_id: Pendulum-v1}]", "network.arch=mlp",
            "network.hidden_sizes=[4]", "network.separate_heads=true", *CARTPOLE[3:])
CASES = {**{agent: (TINY[agent], CARTPOLE) for agent in sorted(AGENTS)},
         "ppo_gaussian": ("tiny.yaml", PENDULUM)}


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_spectrum_matches_dense_float64_hessian_of_the_agents_loss(case, method, tiny_cfg):
    path, overrides = CASES[case]
    cfg = tiny_cfg(*overrides, f"monitor.method={method}", path=path)
    trainer = Trainer(cfg)
    envs = trainer.env_factory.make_vector(trainer.sequence.segment(0).task)
    batch = trainer.agent.probe_batch(envs, 16, seed=3)
    envs.close()
    measured = measure_spectrum(trainer.agent, batch, cfg.monitor, seed=0)

    hessian, network64, like = dense_hessian_of_agent_loss(trainer.agent, batch)
    exact = torch.linalg.eigvalsh(hessian).flip(0).numpy()
    top = measured.arrays["eigenvalues"]
    assert measured.arrays["num_params"] == hessian.shape[0] < 60
    np.testing.assert_allclose(top, exact[:5], rtol=1e-4, atol=1e-10 * abs(exact).max())
    assert measured.scalars["lambda_max"] == top[0]
    live_loss = trainer.agent.loss(batch, lambda o: trainer.agent.network(o, return_features=True))
    assert measured.scalars["loss"] == pytest.approx(live_loss[0].item(), rel=1e-5)
    if method == "lanczos":  # deflated by a Krylov space that is the whole space here: exact
        assert measured.scalars["trace"] == pytest.approx(float(hessian.trace()), rel=1e-8)
    else:  # Hutchinson: unbiased, variance 2(||H||_F^2 - sum H_jj^2) per probe
        spread = math.sqrt(2 * float((hessian**2).sum() - (hessian.diag() ** 2).sum()) / 30)
        assert abs(measured.scalars["trace"] - float(hessian.trace())) <= 4 * spread + 1e-9
    # The SLQ density runs in the full Krylov space: its mean is a trace estimate, its
    # extreme nodes are the extreme eigenvalues.
    nodes, weights = measured.arrays["density_nodes"], measured.arrays["density_weights"]
    assert weights.sum() == pytest.approx(1.0)
    assert nodes.max() == pytest.approx(exact[0], rel=1e-6)
    assert nodes.min() == pytest.approx(exact[-1], rel=1e-6, abs=1e-9)
    # Gauss-Newton J^T H_out J, densely, of the agent's loss on its head outputs.
    outputs = heads_output_fn(network64, batch.obs)(like)
    sizes = [head.out_features for head in network64.heads.values()]
    jacobian = torch.func.jacrev(lambda v: heads_output_fn(network64, batch.obs)(
        unflatten_params(v, like)))(flatten_params(like)).reshape(outputs.numel(), -1)

    def loss_on_outputs(flat):
        heads = dict(zip(network64.heads, flat.reshape(outputs.shape).split(sizes, 1)))
        return trainer.agent.loss(batch, lambda obs: (heads, {}))[0]

    output_hessian = torch.autograd.functional.hessian(loss_on_outputs, outputs.reshape(-1))
    ggn = torch.linalg.eigvalsh(jacobian.T @ output_hessian @ jacobian).flip(0).numpy()
    np.testing.assert_allclose(measured.arrays["ggn_eigenvalues"], ggn[:5], rtol=1e-4,
                               atol=1e-10 * abs(ggn).max())
    first = next(iter(trainer.agent.network.blocks))  # fc1, or the actor's actor_fc1
    hidden = trainer.agent.network.blocks[first].layer
    assert 1 <= measured.scalars[f"kfac/{first}/a_rank"] <= hidden.in_features + 1
    assert measured.scalars["kfac/lambda_max"] == measured.arrays["kfac_eigenvalues"][0] == max(
        v for k, v in measured.scalars.items() if k.startswith("kfac/") and "/lambda_max" in k
        and k != "kfac/lambda_max")


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_files_tags_and_console_hold_the_computed_values(agent, tiny_cfg, tmp_path):
    cfg = tiny_cfg(*FAST_MONITOR, path=TINY[agent])
    run_dir, console, _ = train(cfg)
    segments = len(Trainer(cfg).sequence)
    lines = [line for line in console.splitlines() if line.startswith("spectrum @")]
    assert len(lines) == segments + 1  # the start, every switch, the end
    assert "(pre → post)" in lines[1] and "λmax" in lines[1] and "τ-train" in lines[1]

    acc = events(run_dir)
    files = sorted((run_dir / "spectra").glob("switch_*.npz"))
    assert len(files) == 2 * segments
    for path in files:
        saved = np.load(path)
        phase = str(saved["phase"])
        assert path.stem.endswith(phase)
        assert saved["density_weights"].sum() == pytest.approx(1.0)
        assert len(saved["density_nodes"]) == len(saved["density_weights"]) == 2 * 8
        he2025 = [f"eps_rank_he2025/{eps:g}" for eps in cfg.monitor.he2025_eps]
        for name in ("lambda_max", "trace", "eps_rank_rel", "effective_rank", "tau_trainability",
                     "negative_fraction", "ggn/lambda_max", "kfac/fc1/a_rank", *he2025):
            logged = {e.step: e.value for e in acc.Scalars(f"spectrum/{phase}/{name}")}
            assert logged[int(saved["step"])] == pytest.approx(float(saved[name]), rel=1e-6)
        assert saved["lambda_max"] == saved["eigenvalues"][0]
        # He et al.'s ε-rank: recomputed from the saved density, per probe, at every ε.
        assert list(saved["he2025_eps"]) == list(cfg.monitor.he2025_eps)
        assert list(saved["density_draw_sizes"]) == [8, 8] and str(saved["density_kernel"]) == \
            "relative"
        for eps, name, value in zip(saved["he2025_eps"], he2025, saved["eps_rank_he2025"]):
            assert float(saved[name]) == value == pytest.approx(eps_rank_he2025(
                saved["density_nodes"], saved["density_weights"], eps,
                draw_sizes=saved["density_draw_sizes"]), rel=1e-12)
            assert 0.0 <= value
    assert {"spectrum/pre/top_eigenvalues", "spectrum/post/density",
            "spectrum/post/ggn_top_eigenvalues"} <= set(acc.Tags()["histograms"])
    assert len(acc.Images("spectrum/density_plot")) == segments + 1
    scalars = set(acc.Tags()["scalars"])
    for tag in ("spectrum/post/eps_rank_rel", "spectrum/pre/eps_rank_rel",
                "spectrum/post/eps_rank_he2025/0.01", "spectrum/post/eps_rank_he2025/0.08",
                "spectrum/post/eps_rank_he2025/1", "spectrum/pre/eps_rank_he2025/0.5"):
        assert tag in scalars, tag
    assert "spectrum/post/eps_rank" not in scalars and "ε-rank(rel) " in lines[1]
    for tag in ("plasticity/dormant_ratio_0.025/all", "plasticity/srank/fc1",
                "plasticity/jacobian_share_in_band/conv1", "plasticity/weight_change/all",
                "plasticity/grad_norm", "plasticity/ntk_rank"):
        assert tag in scalars, tag

    # The first post measurement, recomputed from scratch: the same seed gives the same init.
    trainer = Trainer(cfg)
    monitor = SpectralMonitor.for_agent(cfg.monitor, trainer.agent)
    seed = monitor.seed_for(0, "post")
    batch = monitor.subsample(monitor.fresh_batch(trainer.view, trainer.sequence.segment(0), seed),
                              seed)
    again = measure_spectrum(trainer.agent, batch, cfg.monitor, seed)
    saved = np.load(run_dir / "spectra" / "switch_000_post.npz")
    np.testing.assert_allclose(saved["eigenvalues"], again.arrays["eigenvalues"], rtol=1e-6)
    np.testing.assert_allclose(saved["density_nodes"], again.arrays["density_nodes"], rtol=1e-6,
                               atol=1e-9)
    assert float(saved["trace"]) == pytest.approx(again.scalars["trace"], rel=1e-6)


def test_plasticity_metrics_against_hand_computations(tiny_cfg):
    cfg = tiny_cfg("monitor.ntk=false")
    trainer = Trainer(cfg)
    agent, network = trainer.agent, trainer.agent.network
    with torch.no_grad():  # one dead unit in fc1: zero weights and a negative bias
        network.blocks["fc1"].layer.weight[0] = 0
        network.blocks["fc1"].layer.bias[0] = -1
    envs = trainer.env_factory.make_vector(trainer.sequence.segment(0).task)
    batch = agent.probe_batch(envs, 16, seed=0)
    envs.close()
    shift = {name: torch.full_like(p, 0.01) for name, p in network.named_parameters()}
    start = {name: p.detach() - shift[name] for name, p in network.named_parameters()}
    metrics = plasticity_metrics(agent, batch, start, cfg.monitor, seed=0)

    fc1 = network(batch.obs, return_features=True)[1]["fc1"].detach()
    silent = (fc1.abs().sum(0) == 0).double().mean()
    assert silent >= 1 / fc1.shape[1]
    assert metrics["dormant_ratio_0/fc1"] == pytest.approx(float(silent))
    assert metrics["active_fraction/fc1"] == pytest.approx(float((fc1 > 0).double().mean()))
    weight = network.blocks["fc1"].layer.weight.detach()
    assert metrics["weight_norm/fc1"] == pytest.approx(float(weight.norm()), rel=1e-6)
    assert metrics["weight_change/fc1"] == pytest.approx(0.01 * weight.numel() ** 0.5, rel=1e-4)
    total = sum(p.numel() for p in network.parameters())
    assert metrics["weight_change/all"] == pytest.approx(0.01 * total**0.5, rel=1e-4)
    loss = agent.loss(batch, lambda obs: network(obs, return_features=True))[0]
    gradient = torch.autograd.grad(loss, list(network.parameters()))
    expected = torch.cat([g.reshape(-1) for g in gradient]).norm()
    assert metrics["grad_norm"] == pytest.approx(float(expected), rel=1e-5)
    assert 0 < metrics["jacobian_mean/fc1"] and 0 <= metrics["jacobian_share_in_band/fc1"] <= 1
    assert all(p.grad is None for p in network.parameters())  # autograd.grad only


def test_ntk_rank_through_a_channels_last_cnn_matches_a_loop_of_gradients():
    """The network lays NCHW images out as NHWC; under vmap (the NTK) that must still work."""
    spec = NetworkSpec((4, 36, 36), nature_cnn((4, 36, 36), width=0.25), heads={"q": 3},
                       input_scale=1 / 255, channels_last=True)
    network = Network(spec)
    obs = torch.randint(0, 255, (6, 4, 36, 36), dtype=torch.uint8)
    params = {name: p.detach() for name, p in network.named_parameters()}
    rank = ntk_rank(lambda p, x: heads_output_fn(network, x)(p), params, obs)
    rows = []
    for sample in obs:
        output = network(sample[None])["q"].sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            output, list(network.parameters()))]).double())
    gram = torch.stack(rows) @ torch.stack(rows).T
    eigenvalues = torch.linalg.eigvalsh(gram)
    assert rank == int((eigenvalues > 1e-6 * eigenvalues.max()).sum()) > 1


def test_eps_rank_rel_is_exact_within_the_top_k_and_estimated_beyond():
    nodes, weights = np.array([10.0, 1.0, 0.0]), np.array([0.1, 0.2, 0.7])
    # λ_k = 0.05 is below 0.01·10: the count among the top-k is exact.
    assert eps_rank_rel(np.array([10.0, 5.0, 0.2, 0.05]), nodes, weights, 0.01, dim=100) == 3
    # Every top-k eigenvalue qualifies: 100 × the density's mass above 0.1 = 30.
    saturated = np.array([10.0, 5.0, 4.0, 3.0])
    assert eps_rank_rel(saturated, nodes, weights, 0.01, dim=100) == pytest.approx(30)
    # ... but never fewer than the k counted.
    assert eps_rank_rel(saturated, nodes, weights, 0.01, dim=10) == 4


def new_log_probs(agent, batch) -> torch.Tensor:
    """The policy's log-probabilities of the batch's actions through the loss's own forward."""
    params = dict(agent.network.named_parameters())
    with torch.no_grad():
        outputs, _ = torch.func.functional_call(agent.network, params, (batch.obs,),
                                                {"return_features": True})
    return log_prob_and_entropy(outputs["policy"], batch.actions)[0]


@pytest.mark.parametrize("network", ["mlp", "minigrid_cnn"])
def test_pre_measures_a_fresh_batch_with_ratio_one_or_the_stale_last_one(network, tiny_cfg):
    """`fresh`: a rollout of the old task with the current parameters, so PPO's new log-probs
    equal the stored ones (bitwise through the MLP; the CNN's batched forward may differ from
    the rollout's per-step one in the last bit) and nothing is clipped. `last`: the training
    batch, whose log-probs are from before the update (ratio != 1)."""
    extra = CARTPOLE[:3] if network == "mlp" else ()
    cfg = tiny_cfg("monitor.batch_size=64", "ppo.update_epochs=4", *extra)
    assert cfg.monitor.pre_batch == "fresh"  # the default
    trainer = Trainer(cfg)
    agent, segment = trainer.agent, trainer.sequence.segment(0)
    envs = trainer.env_factory.make_vector(segment.task)
    agent.begin_task(envs, seed=0)
    agent.train_iteration(envs, segment.end, trainer.generator)
    monitor = SpectralMonitor.for_agent(cfg.monitor, trainer.agent)
    seed = monitor.seed_for(1, "pre")
    batch = monitor.pre_batch(trainer.view, segment, seed)
    assert batch is not agent.last_batch and len(batch) >= 64
    batch = monitor.subsample(batch, seed)
    new = new_log_probs(agent, batch)
    if network == "mlp":
        assert torch.equal(new, batch.logprobs)
    else:
        assert (new - batch.logprobs).abs().max() <= 1e-6
    forward = lambda obs: agent.network(obs, return_features=True)  # noqa: E731
    assert float(agent.loss(batch, forward)[1]["losses/clipfrac"]) == 0.0
    # Measured again, the same seed gives the same batch: its own seed, not the envs'.
    again = monitor.subsample(monitor.pre_batch(trainer.view, segment, seed), seed)
    assert torch.equal(again.obs, batch.obs) and torch.equal(again.actions, batch.actions)

    last = SpectralMonitor(tiny_cfg("monitor.pre_batch=last", *extra).monitor, 1 << 20)
    stale = last.pre_batch(trainer, segment, seed)
    assert stale is agent.last_batch
    assert (new_log_probs(agent, stale) - stale.logprobs).abs().max() > 1e-4
    envs.close()


def test_dqn_pre_on_a_fresh_batch_is_its_td_loss_on_new_transitions(tiny_cfg):
    """No training batch yet: `last` has nothing to measure, `fresh` measures fresh ε-greedy
    transitions of the task against the current target network."""
    cfg = tiny_cfg("monitor.batch_size=64", path="tiny_dqn.yaml")
    trainer = Trainer(cfg)
    segment = trainer.sequence.segment(0)
    assert trainer.agent.last_batch is None
    last = SpectralMonitor(tiny_cfg("monitor.pre_batch=last", path="tiny_dqn.yaml").monitor,
                           1 << 20)
    assert last.pre_batch(trainer, segment, 1) is None
    monitor = SpectralMonitor.for_agent(cfg.monitor, trainer.agent)
    batch = monitor.subsample(monitor.pre_batch(trainer.view, segment, 1), 1)
    assert len(batch) == 64
    measured = measure_spectrum(trainer.agent, batch, cfg.monitor, seed=1)
    assert math.isfinite(measured.scalars["loss"]) and measured.scalars["loss"] > 0
    assert math.isfinite(measured.scalars["eps_rank_he2025/0.01"])


HE2025 = {"density_probes": 1, "density_steps": 100, "lanczos_steps": 100,
          "density_kernel": "he2025", "batch_size": 1024, "pre_batch": "fresh"}


def test_the_he2025_preset_sits_between_the_defaults_and_explicit_values(tiny_cfg, tmp_path):
    cfg = tiny_cfg("monitor.preset=he2025")
    assert {key: cfg.monitor[key] for key in HE2025} == HE2025
    defaults = tiny_cfg()
    assert defaults.monitor.density_steps == 25 and defaults.monitor.density_kernel == "relative"
    for overrides in (["monitor.preset=he2025", "monitor.density_steps=50"],
                      ["monitor.density_steps=50", "monitor.preset=he2025"]):
        explicit = tiny_cfg(*overrides)  # an explicit value wins, wherever it stands
        assert explicit.monitor.density_steps == 50 and explicit.monitor.lanczos_steps == 100
    with pytest.raises(ConfigError, match="monitor.preset: 'paper' is not one of .*he2025"):
        tiny_cfg("monitor.preset=paper")

    # In a file too, beneath the file's own values.
    mine = tmp_path / "mine.yaml"
    mine.write_text("sequence:\n  tasks: [{env_id: MiniGrid-Empty-5x5-v0}]\n"
                    "monitor: {preset: he2025, batch_size: 512}\n")
    from_file = load_config(mine)
    assert from_file.monitor.batch_size == 512 and from_file.monitor.density_probes == 1

    # A resumed run reloads its resolved config.yaml: the preset applied again changes nothing.
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(explicit))
    assert load_config(saved) == explicit
    # `pliable spectrum` on a run without the preset: its resolved file would hide the preset,
    # so the command line's preset comes as explicit values, below the other overrides.
    plain = tmp_path / "plain.yaml"
    plain.write_text(to_yaml(defaults))
    assert load_config(plain, ["monitor.preset=he2025"]).monitor.density_steps == 25
    for line in (["monitor.preset=he2025", "monitor.batch_size=64"],
                 ["monitor.batch_size=64", "monitor.preset=he2025"]):  # wherever it stands
        offline = load_config(plain, preset_overrides(line))
        assert {key: offline.monitor[key] for key in HE2025} == {**HE2025, "batch_size": 64}


def test_a_bench_can_ask_for_the_he2025_preset(tmp_path):
    bench = tmp_path / "paper.yaml"
    bench.write_text("base: tiny.yaml\nstrategies: [{name: none}]\nreference: false\n"
                     "overrides: [monitor.preset=he2025, monitor.density_steps=40]\n")
    (cell,) = load_bench(bench, tmp_path / "out").cells
    assert cell.cfg.monitor.density_probes == 1 and cell.cfg.monitor.lanczos_steps == 100
    assert cell.cfg.monitor.density_steps == 40 and cell.cfg.monitor.preset == "he2025"


def test_density_figure_with_the_he2025_kernel_draws_their_grid():
    nodes = np.array([-0.5, 0.0, 0.0, 3.0])
    measured = Measurement({}, {"density_nodes": nodes, "density_weights": np.full(4, 0.25),
                                "eigenvalues": np.array([3.0, 0.5])})
    for kernel, points in (("relative", 1001), ("he2025", 10_000)):
        figure = density_figure("t", {"post": measured}, kernel)
        (line,) = figure.axes[0].get_lines()
        assert len(line.get_xdata()) == points
        assert kernel in figure.axes[0].get_ylabel()


@pytest.mark.parametrize("override, key", [
    ("monitor.method=power", "monitor.method"),
    ("monitor.lanczos_steps=5", "monitor.lanczos_steps"),
    ("monitor.tau=0", "monitor.tau"),
    ("monitor.metrics_every=-1", "monitor.metrics_every"),
    ("monitor.top_k=100000", "monitor.top_k"),
    ("monitor.he2025_eps=[]", "monitor.he2025_eps"),
    ("monitor.he2025_eps=[0.1,0]", "monitor.he2025_eps"),
    ("monitor.pre_batch=stale", "monitor.pre_batch"),
    ("monitor.density_kernel=wide", "monitor.density_kernel"),
])
def test_bad_monitor_settings_are_one_line_errors_before_anything_is_written(
        override, key, tiny_cfg, tmp_path):
    extra = ("monitor.lanczos_steps=100000",) if "top_k" in override else ()
    with pytest.raises(ConfigError, match=key):
        run_training(tiny_cfg("monitor.enabled=true", override, *extra), stream=io.StringIO())
    assert not (tmp_path / "runs").exists()
