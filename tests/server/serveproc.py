"""`factpatch serve` as a real process (it must be killable with SIGKILL for the crash test)."""

from factpatch.server.process import ControlPlaneProcess as ServeProc  # noqa: F401
