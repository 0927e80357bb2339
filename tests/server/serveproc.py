"""`factpatch serve` as a real process (it must be killable with SIGKILL for the crash test)."""

from factpatch.harness.control_plane_process import ControlPlaneProcess as ServeProc  # noqa: F401
