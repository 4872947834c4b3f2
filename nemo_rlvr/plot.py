"""`nemo-rlvr plot RUN_DIR`: PNG curves from metrics.jsonl (matplotlib, Agg backend, no display).

Writes RUN_DIR/plots/{reward,accuracy,kl,response_length,step_time}.png and overview.png
(all panels on one page). A key the run never logged leaves its panel out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nemo_rlvr.config import ConfigError
from nemo_rlvr.logging import read_metrics

PANELS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "reward": ("reward", [("train/reward_mean", "train mean")]),
    "accuracy": ("accuracy", [("train/accuracy", "train (sampled)"), ("val/accuracy", "val greedy"),
                              ("val/sampled_accuracy", "val sampled")]),
    "kl": ("KL to reference", [("loss/kl", "loss/kl")]),
    "response_length": ("response length (tokens)", [("train/response_len_mean", "mean"),
                                                     ("train/response_len_max", "max")]),
    "step_time": ("step time (s)", [("timing/step", "step"), ("timing/generate", "generate"),
                                    ("timing/train", "train"), ("timing/weight_sync", "weight sync")]),
}
"""Panel file name -> (title, [(metric key, legend label)])."""


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def _draw(ax, rows: list[dict[str, Any]], title: str, lines: list[tuple[str, str]]) -> bool:
    drawn = False
    for key, label in lines:
        x, y = _series(rows, key)
        if not x:
            continue
        ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
        drawn = True
    if lines[0][0] == "train/reward_mean":  # shade mean ± std
        x, m = _series(rows, "train/reward_mean")
        xs, s = _series(rows, "train/reward_std")
        if x and xs == x:
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2,
                            label="± std")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the PNGs for `run_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path)
    if not rows:
        raise ConfigError(f"{path} is missing or empty; give a run folder (runs/<name>) of a run that logged "
                          f"with logging.jsonl=true.")
    out_dir = out_dir or run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig_all, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (name, (title, lines)) in zip(axes.flat, PANELS.items()):
        _draw(ax, rows, title, lines)
        fig, one = plt.subplots(figsize=(6, 4))
        if _draw(one, rows, title, lines):
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=100)
            written.append(out_dir / f"{name}.png")
        plt.close(fig)
    axes.flat[-1].axis("off")
    fig_all.suptitle(f"{run_dir.name}: {len(rows)} logged steps (last {rows[-1]['step']})")
    fig_all.tight_layout()
    fig_all.savefig(out_dir / "overview.png", dpi=100)
    plt.close(fig_all)
    written.append(out_dir / "overview.png")
    return written
