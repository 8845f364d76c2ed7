"""What the command modules share: the results console, results-folder naming, summary tables."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Results go to stdout; progress and errors go to stderr (core.progress.console).
out = Console(emoji=False, soft_wrap=True)  # piped output: whole lines, never wrapped at 80 columns


def numbered_out(base: str, resume: bool) -> str:
    """``base``, or ``base-2``, ``base-3`` ... : a new folder for a new run, the latest one to resume."""
    taken = [base] + [f"{base}-{k}" for k in range(2, 1000) if Path(f"{base}-{k}").exists()]
    existing = [p for p in taken if Path(p).exists()]
    if resume:
        return existing[-1] if existing else base
    return base if not existing else f"{base}-{len(existing) + 1}"


def default_out(data: str, what: str, resume: bool = False) -> str:
    """``runs/<data>-<what>`` (numbered when taken)."""
    stem = Path(str(data).rstrip("/")).name.replace(":", "-") or "data"
    return numbered_out(str(Path("runs") / f"{stem}-{what}"), resume)


def print_summary(metrics: dict, out_dir: str | Path) -> None:
    """The table of a comparison: accuracy (with CI), epochs and time per strategy, and the winner."""
    table = Table(title=f"results ({escape(str(out_dir))})")
    for col in ("strategy", "test accuracy", "val accuracy", "epochs", "train seconds"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, s in metrics["summary"].items():
        ci = f" ± {s['test_acc_ci95']:.1%}" if s["seeds"] > 1 else ""
        mark = (" *" if name == metrics["winner"] else "") + (" (time budget)" if s.get("budget_cut") else "")
        table.add_row(name + mark, f"{s['test_acc']:.1%}{ci}", f"{s['val_acc']:.1%}", f"{s['epochs']:.0f}",
                      f"{s['seconds']:.1f}")
    out.print(table)
    out.print(f"winner: [bold]{metrics['winner']}[/bold] (chosen on validation accuracy)")
    found = metrics.get("verdict")
    if found:
        out.print(f"verdict: {found['sentence']} ({found['method']})", markup=False, highlight=False)
        for note in found["notes"]:
            out.print(f"  note: {note}", markup=False, highlight=False)
