"""Task sequences switch at exactly the configured steps, in the configured order."""

from agents.run_view import Observer
from agents.runtime.logger import RunLogger
from agents.runtime.trainer import Trainer
from envs.tasks import TaskSequence, TaskSpec


def specs(*names):
    return [TaskSpec("MiniGrid-Empty-5x5-v0", name=n) for n in names]


def test_fixed_order_cycles_and_switch_steps():
    seq = TaskSequence(specs("a", "b", "c"), switch_every=100, cycles=2)
    assert [s.task.name for s in seq] == ["a", "b", "c", "a", "b", "c"]
    assert [s.cycle for s in seq] == [0, 0, 0, 1, 1, 1]
    assert seq.switch_steps == [100, 200, 300, 400, 500]
    assert seq.total_steps == 600
    assert seq.segment_at(99).task.name == "a" and seq.segment_at(100).task.name == "b"
    assert seq.segment_at(599).index == 5


def test_shuffled_order_is_seeded_and_a_permutation_per_cycle():
    names = ("a", "b", "c", "d", "e")
    one = TaskSequence(specs(*names), 10, cycles=3, order="shuffled", seed=4)
    two = TaskSequence(specs(*names), 10, cycles=3, order="shuffled", seed=4)
    other = TaskSequence(specs(*names), 10, cycles=3, order="shuffled", seed=5)
    assert one.schedule == two.schedule != other.schedule
    for cycle in range(3):
        assert sorted(one.schedule[cycle * 5:(cycle + 1) * 5]) == [0, 1, 2, 3, 4]


class Recorder(Observer):
    """Observes through the run's view; looks at the trainer's envs (which observers never get)
    only to check that the swap came first."""

    def __init__(self):
        self.events, self.trainer = [], None

    def on_task_start(self, run, segment):
        env_id = self.trainer.envs.unwrapped.envs[0].spec.id  # the env is already swapped
        self.events.append(("start", segment.task.name, run.ctx.global_step, env_id))

    def on_task_end(self, run, segment):
        self.events.append(("end", segment.task.name, run.ctx.global_step))


def test_loop_fires_events_at_exact_switch_steps(tiny_cfg, tmp_path):
    cfg = tiny_cfg("sequence.switch_every=200", "ppo.num_steps=16", "ppo.update_epochs=1")
    recorder = Recorder()
    trainer = recorder.trainer = Trainer(cfg, [recorder])
    trainer.run(RunLogger(tmp_path, trainer.sequence.total_steps, 1000), tmp_path)
    # 200 steps = 3 rollouts of 16x4 (192) + one shortened to 2 steps x 4 envs.
    assert recorder.events == [
        ("start", "Empty-5x5-v0", 0, "MiniGrid-Empty-5x5-v0"),
        ("end", "Empty-5x5-v0", 200),
        ("start", "DoorKey-5x5-v0", 200, "MiniGrid-DoorKey-5x5-v0"),
        ("end", "DoorKey-5x5-v0", 400),
        ("start", "Empty-5x5_permuted_actions", 400, "MiniGrid-Empty-5x5-v0"),
        ("end", "Empty-5x5_permuted_actions", 600),
    ]
