"""``medrobust bench papers``: each seed paper's own protocol on the built-in data, its claims as data.

One section per paper. A section runs the paper's protocol scaled to the embedded data and ends with
the paper's claims as data, ``benchmarks/claims/<paper>.json``: for each claim its text and source,
the numbers measured (each with its 95 % interval and the images it rests on), a verdict —
``reproduced``, ``not reproduced`` or ``not testable here`` — and the reason for it.
``benchmarks/papers.md`` renders every claims file found.

**Verdicts.** A claim that one condition beats another is ``reproduced`` only when the 95 % interval
of the difference lies on the claimed side of 0, and ``not reproduced`` otherwise (the reason says
whether the difference pointed the claimed way inside its interval, or the other way). The interval
is Newcombe's hybrid score interval from the two Wilson intervals (method 10 of Newcombe 1998). It
treats the two accuracies as independent although both are measured on the same test images; with
positively correlated errors that makes it wider than a paired interval, i.e. conservative.

Sections built so far: ``dpaat`` (:mod:`medrobust.bench.papers_dpaat`: L2 PGD-7 training at ε = 0.3
against PGD-AT, PGD-20 and I-FGSM, Grad-CAM agreement) and ``ran`` (the noise-ratio sweep of
:mod:`medrobust.stages.pretrain`, in and out of distribution, against linear probing, MLP tuning and
NMTune). The sections of the other seed papers (``domain_assimilation``, ``rtda``, ``arfl``) are not
built yet; asking for one is an error that says so.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medrobust.bench.data import default_dataset
from medrobust.evaluation.stats import estimate
from medrobust.params import Params
from medrobust.utils import read_json, write_json

log = logging.getLogger(__name__)

#: every seed paper's section name, in the order of ``papers.md``
PAPERS = ("domain_assimilation", "dpaat", "ran", "rtda", "arfl")
VERDICTS = ("reproduced", "not reproduced", "not testable here")


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a − b`` of two Wilson-interval proportions, with Newcombe's hybrid score interval.

    Args:
        a, b: :func:`medrobust.evaluation.stats.proportion` estimates.

    Returns:
        The :func:`~medrobust.evaluation.stats.estimate` of the difference (``n``: the smaller of the two).
    """
    p1, (l1, u1), p2, (l2, u2) = a["value"], a["ci"], b["value"], b["ci"]
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return estimate(d, (low, high), min(a["n"], b["n"]))


def verdict_of(diff: dict[str, Any], claimed: str = "higher") -> tuple[str, str]:
    """The verdict on "the first is ``claimed`` than the second" from the difference's interval, and why."""
    low, high = diff["ci"]
    sign = 1 if claimed == "higher" else -1
    shown = low > 0 if sign > 0 else high < 0
    text = (f"difference {100 * diff['value']:+.1f} points, 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}] "
            f"on {diff['n']} test images")
    if shown:
        return "reproduced", f"{text}: the interval lies on the claimed side of 0"
    side = sign * diff["value"]
    how = " (the difference points the claimed way)" if side > 0 else " and points the other way" if side < 0 else ""
    return "not reproduced", f"{text}: the interval includes 0{how}"


def _best(entries: list[dict[str, Any]], head: str, cond: str) -> dict[str, Any]:
    return max(entries, key=lambda e: e["heads"][head][cond]["value"])


def ran_claims(report: dict[str, Any]) -> list[dict[str, Any]]:
    """RAN's claims against a ``pretrain.json`` (:mod:`medrobust.stages.pretrain`)."""
    by_ratio = {round(100 * e["ratio"]): e for e in report["ratios"]}
    if 0 not in by_ratio or not ({5, 10} & set(by_ratio)) or max(by_ratio) < 20:
        raise ValueError("bench papers ran: pretrain.noise_ratios must include 0, 0.05 or 0.1, and 0.2 or more")
    heads = list(by_ratio[0]["heads"])
    source = "RAN, arXiv 2407.02716 (abstract and summary)"
    claims = []
    clean = by_ratio[0]
    moderate = [by_ratio[r] for r in (5, 10) if r in by_ratio]
    high = by_ratio[max(by_ratio)]
    for head in heads:
        best = _best(moderate, head, "id_pgd")
        diff = difference(best["heads"][head]["id_pgd"], clean["heads"][head]["id_pgd"])
        verdict, reason = verdict_of(diff)
        claims.append({"id": f"moderate_noise_helps_id_robustness/{head}", "source": source,
                       "claim": "moderate pretraining noise (5-10 %) can improve in-domain robustness",
                       "measured": {"head": head, "condition": "id_pgd", "ratio": best["ratio"],
                                    "noisy": best["heads"][head]["id_pgd"], "clean": clean["heads"][head]["id_pgd"],
                                    "difference": diff},
                       "verdict": verdict, "reason": reason})
        for cond in ("id_clean", "ood_clean"):
            diff = difference(high["heads"][head][cond], clean["heads"][head][cond])
            verdict, reason = verdict_of(diff, "lower")
            claims.append({"id": f"high_noise_degrades/{head}/{cond}", "source": source,
                           "claim": "higher pretraining noise degrades performance, especially out of domain",
                           "measured": {"head": head, "condition": cond, "ratio": high["ratio"],
                                        "noisy": high["heads"][head][cond], "clean": clean["heads"][head][cond],
                                        "difference": diff},
                           "verdict": verdict, "reason": reason})
    baselines = [h for h in heads if h != "ran"]
    if "ran" not in heads or not baselines:
        claims.append({"id": "ran_beats_baselines", "source": source, "claim": "RAN outperforms the baselines",
                       "measured": {}, "verdict": "not testable here",
                       "reason": "pretrain.downstream.heads must include ran and at least one baseline"})
        return claims
    for ratio, entry in sorted(by_ratio.items()):
        best_base = max(baselines, key=lambda h: entry["heads"][h]["id_pgd"]["value"])
        diff = difference(entry["heads"]["ran"]["id_pgd"], entry["heads"][best_base]["id_pgd"])
        verdict, reason = verdict_of(diff)
        claims.append({"id": f"ran_beats_baselines/r{ratio:02d}", "source": source,
                       "claim": "RAN outperforms the light-weight baselines (linear probing, MLP tuning, NMTune) "
                                "across noise ratios",
                       "measured": {"ratio": entry["ratio"], "condition": "id_pgd", "best_baseline": best_base,
                                    "ran": entry["heads"]["ran"]["id_pgd"],
                                    "baseline": entry["heads"][best_base]["id_pgd"], "difference": diff},
                       "verdict": verdict, "reason": reason})
    return claims


def section_ran(params: Params, dataset: Path, work: Path) -> dict[str, Any]:
    """RAN's section: ``medrobust pretrain`` at the params' settings, then its claims."""
    from medrobust.stages import pretrain

    result = pretrain.run(params, dataset, work / "pretrain")
    report = read_json(result.out_dir / "pretrain.json")
    return {"protocol": {"noise_ratios": list(params.pretrain.noise_ratios),
                         "heads": list(params.pretrain.downstream.heads), "shift": report["shift"],
                         "shift_severity": report["shift_severity"], "attack": report["attack"],
                         "n_train_pairs": report["n_train_pairs"], "n_test": report["n_test"]},
            "results": report["ratios"], "claims": ran_claims(report)}


def _section_dpaat(params: Params, dataset: Path, work: Path) -> dict[str, Any]:
    from medrobust.bench.papers_dpaat import section_dpaat

    return section_dpaat(params, dataset, work)


SECTIONS: dict[str, Callable[[Params, Path, Path], dict[str, Any]]] = {"dpaat": _section_dpaat, "ran": section_ran}


def check_papers(papers: list[str] | None) -> list[str]:
    """The sections to run (None: every built one); an unknown or unbuilt name is a ValueError naming both lists."""
    if not papers:
        return list(SECTIONS)
    for name in papers:
        if name not in PAPERS:
            raise ValueError(f"bench papers: unknown paper {name!r}; the seed papers are {', '.join(PAPERS)}")
        if name not in SECTIONS:
            raise ValueError(f"bench papers: the {name} section is not built yet; built: {', '.join(SECTIONS)}")
    return papers


def bench_papers(params: Params, papers: list[str] | None = None, dataset_dir: Path | None = None,
                 out_dir: Path = Path("benchmarks"), command: str = "medrobust bench papers") -> dict[str, Any]:
    """Run the sections; write ``<out_dir>/claims/<paper>.json`` each and ``<out_dir>/papers.md``.

    ``command`` (the command line that reproduces a section) is stored in its claims file.

    Returns:
        ``{paper: section}`` with each section's wall time in seconds.
    """
    names = check_papers(papers)
    dataset = default_dataset(params, dataset_dir)
    (out_dir / "claims").mkdir(parents=True, exist_ok=True)
    sections: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"papers-{name}-") as work:
            section = SECTIONS[name](params, dataset, Path(work))
        section["wall_s"] = round(time.perf_counter() - start, 1)
        write_json(out_dir / "claims" / f"{name}.json", {"paper": name, "command": command, **section})
        sections[name] = section
        log.info("bench papers %s: %d claims in %.0f s", name, len(section["claims"]), section["wall_s"])
    (out_dir / "papers.md").write_text(to_markdown(out_dir / "claims"))
    return sections


def to_markdown(claims_dir: Path) -> str:
    """``papers.md``: every claims file in ``claims_dir``, a table of claims per paper; missing sections named."""
    lines = ["# Each seed paper's claims, tested on the built-in data", "",
             "Reproduce with `medrobust bench papers` (one section: `--paper <name>`). A claim is reproduced only "
             "when the 95 % interval of the difference lies on the claimed side of 0 (`medrobust.bench.papers`).", ""]
    for name in PAPERS:
        path = claims_dir / f"{name}.json"
        if not path.exists():
            lines += [f"## {name}", "", "Not built yet: no claims file.", ""]
            continue
        doc = read_json(path)
        lines += [f"## {name}", "", f"Command: `{doc.get('command', 'medrobust bench papers --paper ' + name)}`; "
                  f"wall time {doc['wall_s']:.0f} s; {doc['protocol'].get('n_test', '?')} test images.", "",
                  "| claim | measured | verdict | reason |", "|---|---|---|---|"]
        for c in doc["claims"]:
            diff = c["measured"].get("difference")
            shown = "—" if diff is None else f"{100 * diff['value']:+.1f} pts"
            lines.append(f"| `{c['id']}`: {c['claim']} | {shown} | **{c['verdict']}** | {c['reason']} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["PAPERS", "SECTIONS", "VERDICTS", "bench_papers", "check_papers", "difference", "ran_claims",
           "section_ran", "to_markdown", "verdict_of"]
