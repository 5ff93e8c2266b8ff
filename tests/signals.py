"""An observer that signals its own process, as Ctrl-C or a job scheduler would."""

import os

from agents.run_view import Observer


class Signals(Observer):
    """Sends this process each of `signums` after the first iteration that reaches `step`."""

    def __init__(self, step: int, *signums: int):
        self.step, self.signums = step, list(signums)

    def after_iteration(self, run):
        if run.ctx.global_step >= self.step and self.signums:
            for signum in self.signums:
                os.kill(os.getpid(), signum)
            self.signums = []
