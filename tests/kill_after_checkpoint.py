"""Test launcher: run training/train.py's main, and die like kill -9 right after the checkpoint of a given step.

    python tests/kill_after_checkpoint.py STEP [train.py arguments ...]

The hook lives here, in the tests, not in the training loop: it wraps the loop's `save_checkpoint`.
"""

import os
import sys

from training.trainer import loop


def main() -> None:
    abort_step, argv = int(sys.argv[1]), sys.argv[2:]
    save = loop.save_checkpoint

    def save_then_die(accelerator, model, optimizer, scheduler, state, best, files):
        path = save(accelerator, model, optimizer, scheduler, state, best, files)
        if state["global_step"] == abort_step:
            os._exit(137)  # no cleanup, no atexit: as abrupt as kill -9 after the checkpoint is complete
        return path

    loop.save_checkpoint = save_then_die
    loop.main(argv)


if __name__ == "__main__":
    main()
