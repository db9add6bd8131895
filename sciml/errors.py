"""Error types raised across layers (all ValueErrors: the command line prints them as one line)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, foreign or of an unknown version, or
    holds a model sciml cannot build."""
