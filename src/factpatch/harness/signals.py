"""A run that starts shards, control planes or gateways (the demo, the benches, the soak) stops them
when it is stopped with SIGTERM.

The harness starts each in a session of its own (`start_new_session`), so a signal to the run does not
reach them, and Python's default SIGTERM ends the run without its `with` blocks and `finally` clauses:
they would go on running. Call `stop_children_on_sigterm()` first thing in such a run's main().
"""

from __future__ import annotations

import signal
import sys


def stop_children_on_sigterm() -> None:
    """SIGTERM (a job timeout, `kill`) unwinds like Ctrl-C does, so what this process started is stopped
    too. Python runs the handler when the main thread is next in the interpreter; while shards start it
    waits in start_all, which a signal interrupts, and the starts under way are cancelled (measured on
    the demo: exit 2.7 s after SIGTERM, both shard processes gone)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
