"""C⁻¹x for many right-hand sides from one factorisation of a layer's key covariance C.

ROME's input directions need C⁻¹k for every edit (and for every written and protected context of it).
Solving each from C again costs d³ per edit — about a TFLOP at a 14,336-wide MLP, far more than the
edit's value steps; factorised once per layer and call, each later solve costs d². The factor is
made in float64 on first use (the directions are computed in float64) and held while the solver is.

    solve = CovSolver(cov)
    directions = [solve(k) / (k @ solve(k)) for k in keys]
"""

from __future__ import annotations

import torch


class CovSolver:
    def __init__(self, cov: torch.Tensor):
        self.cov = cov
        self._cholesky: torch.Tensor | None = None
        self._lu: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        return self.cov.shape[0]

    def _factorise(self) -> None:
        c = self.cov.to(torch.float64)
        factor, info = torch.linalg.cholesky_ex(c)
        if int(info) == 0:
            self._cholesky = factor
        else:  # not numerically positive definite (e.g. a unit that never fires): LU, as a plain solve would
            del factor
            self._lu = torch.linalg.lu_factor(c)

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        """C⁻¹ rhs in float64; rhs [d] or [d, n]."""
        if self._cholesky is None and self._lu is None:
            self._factorise()
        b = rhs.to(torch.float64)
        column = b.dim() == 1
        if column:
            b = b[:, None]
        if self._cholesky is not None:
            x = torch.cholesky_solve(b, self._cholesky)
        else:
            x = torch.linalg.lu_solve(*self._lu, b)
        return x[:, 0] if column else x


def solver(cov: "torch.Tensor | CovSolver") -> CovSolver:
    """The solver itself, or one for a covariance tensor (factorised on its first solve)."""
    return cov if isinstance(cov, CovSolver) else CovSolver(cov)
