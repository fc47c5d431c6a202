"""The comparison table and figure of ``pipelines/compare.yaml`` (issue 11), from the outputs of other commands.

Three parts, each a list of ``(label, folder)``:

* encoders: folders with ``encoder.safetensors`` (``train-encoder --patches``) and ``valid-patches.csv`` +
  ``.metrics.json`` (``score-patches``): parameters, GFLOPs at the tile size (``torch.utils.flop_counter``:
  matmuls, convolutions, attention), CPU tiles/s, training budget and time, patch AUC with its 95 % interval;
* feature modes and aggregators: ``evaluate`` folders (``metrics.json``, ``per_slide.csv``; the slide model is
  found through ``metrics.json``'s ``model_path``): slide AUC with its 95 % interval, FROC, sensitivity per
  lesion class, the slide model's parameters;
* paired tests (DeLong) between pairs of aggregators or modes on the slides both scored.

:func:`compare` writes ``comparison.md`` (one markdown table with a caption that says what was scaled down,
from the checkpoints' own training records), ``comparison.png`` (ROC curves overlaid, one panel per part) and
``comparison.json``, each atomically; the runs themselves are read (and encoders profiled) by
:mod:`.compare_runs`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ...outputs.atomic import json_safe, write_json_atomic, write_text_atomic
from .compare_runs import paired_delong, read_encoder_run, read_slide_run

Entry = tuple[str, Path]
LESION_CLASSES = ("macro", "micro", "itc")
PUBLISHED = "VMamba region 94.2 %, ResNet-152 92.8 %, Swin-T sliding window 91.5 % slide AUC"


# --- the table -------------------------------------------------------------------------------------------


def _ci(auc: float | None, low: float | None, high: float | None, bold: bool = False) -> str:
    if auc is None:
        return "–"
    value = f"**{auc:.3f}**" if bold else f"{auc:.3f}"
    return f"{value} ({low:.3f}–{high:.3f})" if low is not None and high is not None else value


def _sensitivities(by_class: dict) -> tuple[str, str]:
    parts = []
    for cls in LESION_CLASSES:
        entry = by_class.get(cls)
        if entry is None:
            parts.append("–")
        else:
            parts.append(f"{round(entry['sensitivity'] * entry['slides'])}/{entry['slides']}")
    normal = by_class.get("none") or by_class.get("normal")
    fp = "–" if normal is None else f"{round(normal['false_positive_rate'] * normal['slides'])}/{normal['slides']}"
    return " · ".join(parts), fp


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n / 1e3:.0f} k" if n >= 10_000 else f"{n:,}"


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _best(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


HEADER = [
    "part",
    "model",
    "params",
    "GFLOPs / tile",
    "CPU tiles/s infer / train",
    "evaluated on",
    "AUC (95 % CI)",
    "FROC",
    "sensitivity macro / micro / ITC",
    "false positives",
]


def table_rows(results: dict) -> list[list[str]]:
    """The rows of the comparison table (``HEADER``'s columns); the best AUC of each part in bold."""
    rows = []
    encoders = results.get("encoders", [])
    best = _best([e["patch"]["auc"] for e in encoders])
    for e in encoders:
        p = e["patch"]
        rows.append(
            [
                "(a) encoder",
                e["label"],
                _count(e.get("params")),
                f"{e['gflops']:.3f}" if e.get("gflops") is not None else "–",
                f"{e['tiles_per_s']:.0f} / {e['train_patches_per_s']:.0f}" if e.get("tiles_per_s") is not None else "–",
                f"{p['n']:,} PCam valid patches" if p.get("n") else "PCam valid patches",
                _ci(p["auc"], p.get("auc_ci_low"), p.get("auc_ci_high"), p["auc"] == best),
                "–",
                "–",
                "–",
            ]
        )
    for part, key in (("(b) VMamba mode", "modes"), ("(c) aggregator", "aggregators")):
        runs = results.get(key, [])
        best = _best([r["slides"].get("auc") for r in runs])
        for r in runs:
            s = r["slides"]
            sens, fp = _sensitivities(r["by_lesion_class"])
            rows.append(
                [
                    part,
                    r["label"],
                    _count(r["model"].get("params")),
                    "–",
                    "–",
                    f"{s.get('n', len(r['labels']))} held-out slides",
                    _ci(s.get("auc"), s.get("auc_ci_low"), s.get("auc_ci_high"), s.get("auc") == best),
                    f"{r['froc']:.3f}" if r.get("froc") is not None else "–",
                    sens,
                    fp,
                ]
            )
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; ``|`` in a cell is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)])


def _budget_text(encoders: list[dict]) -> str:
    if not encoders:
        return ""
    budgets = [json.dumps(e["budget"], sort_keys=True) for e in encoders]
    b = encoders[0]["budget"]
    draws = b.get("epoch_patches")
    per_epoch = f"{draws:,} class-balanced draws" if draws else f"all {encoders[0]['training_patches']:,} patches"
    same = "the same for every encoder" if len(set(budgets)) == 1 else "NOT the same for every encoder (see JSON)"
    times = ", ".join(f"{e['label']} {e['training_seconds'] / 60:.0f} min" for e in encoders)
    return (
        f"Encoders trained from scratch on PCam train ({encoders[0]['training_patches']:,} patches; "
        f"{encoders[0]['validation']} for the best epoch) for **{b.get('epochs')} epochs × {per_epoch}** "
        f"(batch {b.get('batch_size')}, AdamW lr {b.get('lr'):g} one-cycle, histology augmentations, seed "
        f"{b.get('seed')}; {same}) — scaled down from the default recipe's encoder training "
        f"(pipelines/pcam-camelyon.yaml). Training wall time (the machine's load can vary between the runs, so "
        f"compare speeds in the train column, measured together): {times}."
    )


def _slide_text(results: dict) -> str:
    runs = results.get("modes", []) + results.get("aggregators", [])
    if not runs:
        return ""
    r = runs[0]
    classes = ", ".join(f"{r['by_lesion_class'][c]['slides']} {c}" for c in LESION_CLASSES if c in r["by_lesion_class"])
    n, pos = r["slides"].get("n"), r["slides"].get("n_positive")
    train = r["model"].get("training_slides"), r["model"].get("validation_slides")
    trained = (
        f"trained on {train[0] + train[1]} real-tissue slides ({train[0]} train / {train[1]} validation)"
        if all(v is not None for v in train)
        else "trained on the training cohort"
    )
    return (
        f"Slide models {trained}, evaluated on {n} held-out slides built from PCam valid patches only "
        f"({pos} tumour: {classes}); sensitivity and false positives at probability 0.5; FROC: CAMELYON16 "
        f"lesion-level (ITCs neither counted nor penalised). (b) and (c) use the default recipe's encoder"
        + (f" (hash {r['model']['encoder_hash']})." if r["model"].get("encoder_hash") else ".")
    )


def _threads_text(encoders: list[dict]) -> str:
    counts = sorted({e["threads"] for e in encoders if e.get("threads")})
    if not counts:
        return "torch's thread count"
    return " / ".join(str(c) for c in counts) + (" torch thread" if counts == [1] else " torch threads")


def caption(results: dict) -> str:
    """What the table shows and what was scaled down, from the runs' own records."""
    parts = [
        "**Comparison (issue 11)** — (a) encoders at matched size, patch AUC on PCam valid; (b) VMamba tile mode "
        "against region mode, slide AUC; (c) slide aggregators on the same tile features, slide AUC. 95 % "
        "intervals: stratified bootstrap (2,000 resamples); best AUC of each part in bold. Params: the encoder's "
        "in (a), the slide model's in (b) and (c). GFLOPs per tile: `torch.utils.flop_counter` (2 per "
        "multiply-add of matmuls, convolutions and attention; the selective scan's elementwise recurrence is not "
        "counted); CPU tiles/s: inference / training step (forward, backward, AdamW), batch 64, "
        f"{_threads_text(results.get('encoders', []))}, median of timed batches, all measured together at the end "
        "(indicative).",
        _budget_text(results.get("encoders", [])),
        _slide_text(results),
    ]
    for paired in results.get("paired", []):
        parts.append(
            f"Paired test, {paired['a']} vs {paired['b']} on the same {paired['n']} slides ({paired['test']}): "
            f"ΔAUC {paired['difference']:+.3f} (95 % CI {paired['ci_low']:+.3f} to {paired['ci_high']:+.3f}), "
            f"z = {paired['z']:.2f}, **{_p(paired['p_value'])}**."
        )
    tests = results.get("encoder_tests") or []
    if tests:
        against = "; ".join(f"{t['a']} {t['difference']:+.3f} ({_p(t['p_value'])})" for t in tests)
        parts.append(f"Patch AUC against {tests[0]['b']} on the same patches (DeLong): {against}.")
    parts.append(f"Published claim (CAMELYON16 case study, full-size slides): {PUBLISHED}.")
    return " ".join(p for p in parts if p)


def write_figure(results: dict, path: str | Path) -> Path:
    """The ROC curves of every part overlaid, one panel per part, in one PNG (atomic)."""
    from ...evaluation.roc_plot import write_roc_panels

    panels = {
        "(a) encoders: PCam valid patches": {e["label"]: (e["labels"], e["scores"]) for e in results["encoders"]},
        "(b) VMamba tile vs region: slides": {r["label"]: (r["labels"], r["scores"]) for r in results["modes"]},
        "(c) aggregators: slides": {r["label"]: (r["labels"], r["scores"]) for r in results["aggregators"]},
    }
    return write_roc_panels(panels, path)


def compare(
    out: str | Path,
    encoders: Sequence[Entry] = (),
    modes: Sequence[Entry] = (),
    aggregators: Sequence[Entry] = (),
    paired: Sequence[tuple[str, str]] = (),
    profile: bool = True,
    repeats: int = 3,
) -> dict:
    """Read the runs, run a paired test per pair of labels in ``paired``, and write ``comparison.md``, ``.png``
    and ``.json`` under ``out``; returns the results (without the per-patch arrays)."""
    if not (encoders or modes or aggregators):
        raise ValueError("nothing to compare: give encoders, modes or aggregators")
    labels = [label for label, _ in (*encoders, *modes, *aggregators)]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"labels given twice: {', '.join(repeated)} (each row of the table needs its own label)")
    same = [a for a, b in paired if a == b]
    if same:
        raise ValueError(f"--paired: {same[0]} against itself")
    slide_labels = {label for label, _ in (*modes, *aggregators)}
    missing = [label for pair in paired for label in pair if label not in slide_labels]
    if missing:
        raise ValueError(f"--paired: no aggregator or mode labelled {', '.join(missing)}")
    results: dict = {
        "encoders": [read_encoder_run(label, folder, profile, repeats) for label, folder in encoders],
        "modes": [read_slide_run(label, folder) for label, folder in modes],
        "aggregators": [read_slide_run(label, folder) for label, folder in aggregators],
    }
    by_label = {r["label"]: r for r in results["aggregators"] + results["modes"]}
    results["paired"] = [paired_delong(by_label[a], by_label[b]) for a, b in paired]
    first, *others = results["encoders"] or [None]
    results["encoder_tests"] = [paired_delong(other, first) for other in others]  # each against the first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = write_figure(results, out / "comparison.png")
    text = "\n\n".join([markdown_table(HEADER, table_rows(results)), caption(results)]) + "\n"
    write_text_atomic(out / "comparison.md", text)
    arrays = ("labels", "scores", "names")
    summary = {
        key: [{k: v for k, v in run.items() if k not in arrays} for run in results[key]]
        for key in ("encoders", "modes", "aggregators")
    }
    summary["paired"] = results["paired"]
    summary["encoder_tests"] = results["encoder_tests"]
    summary["figure"] = str(figure)
    write_json_atomic(out / "comparison.json", json_safe(summary))
    return summary
