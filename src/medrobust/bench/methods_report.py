"""``benchmarks/methods.md``: the ranked table of :func:`medrobust.bench.methods.bench_methods`."""

from __future__ import annotations

from typing import Any


def _cell(fig: dict[str, Any]) -> str:
    sd = f" ± {fig['sd']:.3f}" if fig.get("sd") is not None else ""
    return f"{fig['mean']:.3f}{sd} [{fig['ci'][0]:.2f}, {fig['ci'][1]:.2f}]"


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the protocol, the ranked table, the unranked methods, per-attack details.

    Args:
        report: :func:`~medrobust.bench.methods.bench_methods`'s report.
        command: the command line that reproduces it.

    Returns:
        The markdown page.
    """
    a, summary = report["attack"], report["summary"]
    methods = summary["methods"]
    seeds = report["seeds"]
    eps255 = a["eps"] * 255
    lines = [
        "# Training methods on the built-in data: both threat models, AutoAttack, masking checks, 3 seeds",
        "",
        f"Command: `{command}`",
        "",
        f"Same budget for every method: backbone `{report['backbone']}`, {report['epochs']} epochs "
        f"({report['clean_warmup_epochs']} of clean warm-up), batch {report['batch_size']}, {report['optimizer']['name']} "
        f"lr {report['optimizer']['lr']}, seeds {', '.join(map(str, seeds))}; each method with its `train.methods` "
        f"settings from params.yaml. Test split: {report['n_test']} images (the same for every seed).",
        "",
        f"**Shared L∞ suite** at ε = {eps255:.0f}/255: FGSM, PGD-{a['pgd_steps']} (random start) and the AutoAttack-style "
        f"ensemble ({a['steps']} APGD steps, Square {a['n_queries']} queries); the worst case counts a point as robust "
        f"only if it survives all three. **Own threat model** for methods trained against an L2 budget: PGD-L2-"
        f"{a['pgd_steps']} and AutoAttack-L2 at the ε the method trained with. Every figure: the mean over "
        f"{len(seeds)} seeds ± their sd, and in brackets the 95% Wilson interval on the pooled "
        f"{len(seeds)} × {report['n_test']} test predictions (the test set's sampling error; the sd is the seed spread).",
        "",
        "Ranked by the shared L∞ worst case. A method that fails a gradient-masking check for any seed is "
        "listed below the ranking, **not ranked**: its robust accuracy may be an artefact of masked gradients.",
        "",
        "| rank | method | trained against | clean accuracy | L∞ worst case | own threat model (L2) worst case | "
        "masking checks | train s |",
        "|---:|---|---|---:|---:|---:|---|---:|",
    ]

    def row(rank: str, m: str) -> str:
        s = methods[m]
        own = (f"ε={s['own_l2']['eps']:.3g}: {_cell(s['own_l2']['worst_case'])}" if "own_l2" in s else "—")
        masking = "all pass" if not s["failed_checks"] else "FAIL: " + ", ".join(s["failed_checks"])
        trained = s["train_norm"] or "—"
        note = f" ({s['note']})" if s["note"] else ""
        return (f"| {rank} | {m}{note} | {trained} | {_cell(s['clean'])} | {_cell(s['linf_worst_case'])} | {own} | "
                f"{masking} | {s['train_seconds']:.0f} |")

    lines += [row(str(i), m) for i, m in enumerate(summary["ranking"], start=1)]
    lines += [row("not ranked", m) for m in summary["not_ranked"]]
    lines += ["", "## Each attack (mean over seeds ± sd [pooled 95% Wilson CI])", "",
              "| method | " + " | ".join(next(iter(methods.values()))["linf_attacks"]) + " | L2 attacks at own ε |",
              "|---|" + "---:|" * (len(next(iter(methods.values()))["linf_attacks"]) + 1)]
    for m, s in methods.items():
        own = ", ".join(f"{k} {_cell(v)}" for k, v in s["own_l2"]["attacks"].items()) if "own_l2" in s else "—"
        lines.append(f"| {m} | " + " | ".join(_cell(v) for v in s["linf_attacks"].values()) + f" | {own} |")
    if summary["not_ranked"]:
        lines += ["", "Masking checks that failed (for at least one seed): " + "; ".join(
            f"{m}: {', '.join(c)}" for m, c in summary["not_ranked"].items())
                  + ". See the README's gradient-masking checks for what each means."]
    return "\n".join(lines) + "\n"


__all__ = ["to_markdown"]
