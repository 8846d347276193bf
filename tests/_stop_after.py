"""A stand-in for train.StopRequest that the resume tests share."""

import signal


class StopAfter:
    """Stand-in for the signal handlers: 'SIGINT arrives' at the n-th check between steps."""

    def __init__(self, n):
        self.n, self.calls, self.signum = n, 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def requested(self):
        self.calls += 1
        if self.calls >= self.n:
            self.signum = signal.SIGINT
        return self.signum is not None
