"""The causal-trace heat map: one panel per kind of state, token roles × layers, averaged over prompts."""

from __future__ import annotations

from pathlib import Path

from factpatch.core.atomic import atomic_path

from .trace import KIND_LABELS, TraceResult


def render(result: TraceResult, path: str | Path) -> None:
    """Write the PNG atomically (a temporary file renamed into place), so a failure leaves nothing behind."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    kinds = list(result.settings.kinds)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds) + 1.5, 3.6), squeeze=False)
    n = len(result.prompts)
    for ax, kind in zip(axes[0], kinds):
        roles, mat, counts = result.by_role(kind)
        m = mat.numpy()
        vmax = max(1e-6, float(abs(m).max()))
        im = ax.imshow(m, cmap="Purples" if kind == "residual" else ("Greens" if kind == "mlp" else "Reds"),
                       vmin=min(0.0, float(m.min())), vmax=vmax, aspect="auto")
        ax.set_xticks(range(result.n_layers))
        ax.set_xlabel("layer" + (f" (window of {result.window} restored)" if kind != "residual" and result.window > 1 else ""))
        ax.set_yticks(range(len(roles)))
        ax.set_yticklabels([f"{r} ({c})" if c != n else r for r, c in zip(roles, counts)] if ax is axes[0][0] else [])
        if ax is axes[0][0] and any(c != n for c in counts):
            ax.set_ylabel("token role  (n): prompts that have it", fontsize=8)
        ax.set_title(f"restoring the {KIND_LABELS[kind]}", fontsize=10)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.6 * vmax else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("indirect effect (Δ P(answer))", fontsize=8)
    p_clean = sum(p.p_clean for p in result.prompts) / max(1, n)
    p_corr = sum(p.p_corrupt for p in result.prompts) / max(1, n)
    fig.suptitle(
        f"Causal trace over {n} prompt(s): P(answer) clean {p_clean:.2f}, subject corrupted {p_corr:.2f} "
        f"(noise {result.settings.noise_scale:g}σ, {result.settings.samples} samples)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130)
    finally:
        plt.close(fig)
