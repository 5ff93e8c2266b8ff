"""`pliable train`: build everything, then open the run directory and train."""

from __future__ import annotations

import sys

from agents.logger import RunLogger
from agents.loop import Trainer
from agents.run import log_config, new_run_dir, save_config, write_status


def run_training(cfg, listeners=(), stream=sys.stdout) -> int:
    trainer = Trainer(cfg, listeners)  # bad input fails here, before a file is written
    run_dir = new_run_dir(cfg)
    save_config(run_dir, cfg)
    write_status(run_dir, "running")
    logger = RunLogger(run_dir, trainer.sequence.total_steps, cfg.print_every, stream)
    log_config(logger.writer, cfg)
    print(f"run directory: {run_dir}", file=stream, flush=True)
    try:
        trainer.run(logger)
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", step=trainer.ctx.global_step)
        print(f"\ninterrupted at step {trainer.ctx.global_step:,}; logs kept in {run_dir}",
              file=stream)
        return 130
    except BaseException as exc:
        write_status(run_dir, "failed", step=trainer.ctx.global_step, error=repr(exc))
        raise
    finally:
        logger.close()
    write_status(run_dir, "finished", step=trainer.ctx.global_step)
    print(f"done: {trainer.ctx.global_step:,} env steps in {run_dir}\n"
          f"view the curves: tensorboard --logdir {run_dir.parent}", file=stream)
    return 0
