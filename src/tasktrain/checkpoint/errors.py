"""The one error type of checkpoint reading and writing."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, or does not fit what it is loaded into."""
