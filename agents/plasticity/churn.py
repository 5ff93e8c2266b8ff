"""C-CHAIN: reduce churn, the change of the network's outputs on data outside the minibatch."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional

import torch
from torch.func import functional_call

from agents.plasticity.base import Strategy, register_strategy

DEFAULT_TARGETS = {"ppo": 0.05, "dqn": 0.01}  # the paper's relative loss scales


@register_strategy("c_chain")
class CChain(Strategy):
    """Churn penalty λ·mean‖f_θ(x̄) − f_θ⁻(x̄)‖² on an independent reference batch x̄ of recent
    observations, θ⁻ the parameters before the previous gradient step; λ is scaled automatically
    to target·mean|L| / mean(churn) over the last `window` steps, L the policy loss the agent
    names (whatever `heads` holds): PPO's clipped policy surrogate alone (as the authors' code:
    not the value loss or the entropy bonus, whose −ent_coef·H is most of |total| while the policy
    learns); an agent naming none (DQN) gives its whole loss, the TD loss. Defaults: target 0.05
    for PPO, 0.01 for DQN (the paper's); heads PPO's policy, DQN's all; batch_size 0 is the
    minibatch's."""

    paper = "Tang et al. 2025, Mitigating plasticity loss in continual reinforcement learning by " \
            "reducing churn (ICML 2025)"
    state_attributes = ("previous", "coef", "churn")

    @dataclass
    class Settings:
        target: Optional[float] = None  # relative loss scale; None: 0.05 for PPO, 0.01 for DQN
        heads: Optional[list[str]] = None  # outputs whose churn counts; None: PPO policy, DQN all
        batch_size: int = 0  # reference batch; 0: the minibatch's size
        window: int = 100  # gradient steps in the running means that set λ

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.network = ctx.network
        self.target = self.settings.target
        if self.target is None:
            self.target = DEFAULT_TARGETS.get(ctx.agent, DEFAULT_TARGETS["dqn"])
        self.heads = self.settings.heads
        if self.heads is None:
            self.heads = ["policy"] if ctx.agent == "ppo" else list(ctx.network.heads)
        self.previous: Optional[dict[str, torch.Tensor]] = None
        self.losses = collections.deque(maxlen=self.settings.window)
        self.churns = collections.deque(maxlen=self.settings.window)
        self.coef, self.churn = 0.0, 0.0

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.network.state_dict().items()}

    def loss_penalty(self, step):
        previous, self.previous = self.previous, self.snapshot()
        if previous is None:  # no earlier step to compare with
            return None
        size = self.settings.batch_size or step.obs.shape[0]
        reference = step.ctx.sample_obs(size, self.generator)
        outputs = self.network(reference)
        with torch.no_grad():
            before = functional_call(self.network, previous, (reference,))
        churn = sum((outputs[h] - before[h]).pow(2).sum(-1).mean() for h in self.heads)
        # the agent names its policy loss in extras (PPO); otherwise the whole loss (DQN: TD)
        objective = step.extras.get("policy_loss", step.loss)
        self.losses.append(objective.detach().abs())
        self.churns.append(churn.detach())
        mean_churn = torch.stack(list(self.churns)).mean()
        self.coef = self.target * torch.stack(list(self.losses)).mean() / (mean_churn + 1e-8)
        self.churn = churn.detach()
        return self.coef * churn

    def metrics(self):
        return {"coef": self.coef, "churn": self.churn}

    def state_dict(self):
        return {**super().state_dict(), "losses": list(self.losses), "churns": list(self.churns)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.losses.extend(state["losses"])
        self.churns.extend(state["churns"])
