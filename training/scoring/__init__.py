"""What `molex-score` (`training/score_cli.py`) is made of: the score table's text format, bounded decoding, the
window-batched scoring loop, the shards of a many-process run and their merge, and the processes themselves."""


class ScoringError(RuntimeError):
    """A run that cannot go on (output busy or unwritable, processes that disagree, a model that does not load). The
    message says why and what was kept; `molex-score` prints it without a traceback and exits with status 2."""
