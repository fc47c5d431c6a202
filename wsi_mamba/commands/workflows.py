"""``wsi-mamba extract | evaluate | predict | run`` (and, between extract and evaluate, the training commands of
:mod:`.training`): thin wrappers around ``wsi_mamba.workflows``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..features.modes import TileMode, ViewsOnDemand, resolve, with_stain
from ..features.options import ReadOptions
from ..slide.base import set_max_pixels
from . import regions, training
from ._args import (
    THREADS_HELP,
    UsageError,
    command_device,
    command_parser,
    device_argument,
    encoder_arguments,
    encoder_options,
    max_pixels_argument,
    name_text,
    path_text,
    positive_int,
    read_options,
    requested_mode,
    stain_request,
    tile_arguments,
)

# Workflow errors are ValueErrors whose message names the file and the problem.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def _tile_arguments(p: argparse.ArgumentParser) -> None:
    """The tile options of ``extract`` and ``predict``: the shared ones, the decoding limit, torch threads."""
    tile_arguments(p, workers_alias=True)
    max_pixels_argument(p)
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)


TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    r"""``text`` as one field of a tab-separated line: backslash, tab, newline and CR written as ``\\``,
    ``\t``, ``\n`` and ``\r`` (the escapes of PostgreSQL's text format), so a name never splits a line."""
    return str(text).translate(TSV_ESCAPES)


def _read_options(args: argparse.Namespace) -> ReadOptions:
    """The read options, after setting torch's thread count and the decoding limit from ``args``."""
    from ..threads import apply_threads

    apply_threads(args.threads)
    set_max_pixels(args.max_pixels)
    return read_options(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow subcommands to the CLI."""
    p = command_parser(
        subparsers,
        "extract",
        "Encode the tissue tiles of slides into one feature store (zarr) per slide; resumable.",
        "wsi-mamba extract data/cohort/training --encoder encoder.safetensors --out features/\n  "
        "wsi-mamba extract slides/ --encoder timm:resnet50 --encoder-weights resnet50.safetensors --out features/",
    )
    p.add_argument("slides", nargs="+", type=path_text, help="slide files or folders (searched recursively)")
    p.add_argument("--out", type=path_text, required=True, help="folder of feature stores")
    p.add_argument(
        "--encoder",
        type=path_text,
        help="encoder checkpoint (.safetensors), timm:NAME (with --encoder-weights), a Hugging Face-style model "
        "folder, or a registry name (random weights); default: the default model's, and then, unless --views, "
        "--views-on-demand, --region-px or --stain-norm say otherwise, in the feature mode the default model reads",
    )
    encoder_arguments(p)
    _tile_arguments(p)
    device_argument(p)
    p.add_argument("--json", action="store_true", help="print per-slide results as JSON")
    p.set_defaults(func=cmd_extract)

    training.register(subparsers)  # train-encoder, train: in the order a study runs them
    regions.register(subparsers)  # calibrate-regions: after train

    p = command_parser(
        subparsers,
        "evaluate",
        "Slide AUC (95% bootstrap interval), accuracy, ROC curve and per-slide CSV; FROC with annotations.",
        "wsi-mamba evaluate --model model/ --features features/ --labels reference.csv --baseline --out eval/",
    )
    p.add_argument("--model", type=path_text, help="model folder (default: the shipped default model)")
    p.add_argument("--features", type=path_text, required=True, help="folder of feature stores")
    p.add_argument("--labels", type=path_text, required=True, help="CSV of slide labels")
    p.add_argument("--annotations", type=path_text, help="lesion annotations folder: adds the lesion-level FROC")
    p.add_argument("--baseline", action="store_true", help="also report the colour-statistics baseline")
    p.add_argument("--out", type=path_text, required=True, help="folder for metrics.json, per_slide.csv, roc.png")
    p.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    device_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = command_parser(
        subparsers,
        "predict",
        "Metastasis probability of each slide (features on the fly); optional heatmap and GeoJSON.",
        "wsi-mamba predict slide.svs --heatmap --out results/",
    )
    p.add_argument("slides", nargs="+", type=path_text, help="slide files or folders")
    p.add_argument("--model", type=path_text, help="model folder (default: the shipped default model)")
    p.add_argument("--out", type=path_text, help="folder for NAME.json (and heatmaps)")
    p.add_argument(
        "--heatmap", action="store_true", help="write NAME.heatmap.png, NAME.tiles.geojson and NAME.regions.geojson"
    )
    _tile_arguments(p)
    device_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.set_defaults(func=cmd_predict)

    p = command_parser(
        subparsers,
        "run",
        "Run a recipe (YAML list of wsi-mamba commands); finished steps are skipped on a rerun.",
        "wsi-mamba run pipelines/synthetic-camelyon.yaml --dry-run",
    )
    p.add_argument("recipe", type=path_text, help="recipe YAML (see pipelines/)")
    p.add_argument("--workdir", type=path_text, help="run in this folder instead of the recipe's workdir")
    p.add_argument(
        "--set", action="append", default=[], type=name_text, metavar="NAME=VALUE", help="override a recipe variable"
    )
    p.add_argument(
        "--only", action="append", default=[], type=name_text, metavar="STEP", help="run just this step (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads of every step that does not set its own (default: each step takes the cores idle "
        "when it starts; weights can change in their last bits with the thread count)",
    )
    p.set_defaults(func=cmd_run)


def cmd_extract(args: argparse.Namespace) -> int:
    device = command_device(args)  # a device this machine lacks fails here, before anything is loaded
    from ..models.encoder import load_encoder
    from ..workflows.bundle import default_model_path, model_tile_mode

    requested, stain = requested_mode(args), stain_request(args)  # the stain target fitted now
    if args.encoder is None and requested is None and stain is None:
        mode = model_tile_mode(default_model_path())  # the default model's encoder in the mode its slide model reads
    else:
        if isinstance(requested, ViewsOnDemand):  # another encoder: no model whose views it could take
            raise UsageError("--views-on-demand needs --views 4 or 8 in extract (there is no model to take them from)")
        mode = with_stain(requested or TileMode(), stain)
    from ..workflows.extract import extract_slides
    from ..workflows.inputs import find_slides

    slides = find_slides(args.slides)
    spec = args.encoder or default_model_path() / "encoder.safetensors"
    encoder = load_encoder(spec, **encoder_options(args, args.encoder)).to(device)
    results = extract_slides(slides, args.out, encoder, mode, _read_options(args))
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        done = sum(v == "done" for v in results.values())
        skipped = sum(v == "skipped" for v in results.values())
        print(f"{done} extracted, {skipped} already complete, {len(failed)} failed -> {args.out}")
        for name, why in failed.items():
            print(f"error: {name}: {why.removeprefix('failed: ')}", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..threads import apply_threads

    apply_threads(None)  # no --threads here: the cores idle now (OMP_NUM_THREADS wins)
    device = command_device(args)
    from ..workflows.reports.evaluate import evaluate

    metrics = evaluate(
        args.model,
        args.features,
        args.labels,
        args.out,
        args.annotations,
        args.baseline,
        args.bootstrap,
        device=device,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for key in ("slides", "baseline"):
        if key in metrics:
            m = metrics[key]
            label = metrics["model"] if key == "slides" else "colour baseline"
            print(
                f"{label}: AUC {m['auc']:.3f} (95% CI {m['auc_ci_low']:.3f}-{m['auc_ci_high']:.3f}) "
                f"on {m['n']} slides, "
                f"accuracy {m['accuracy_at_0.5']:.3f} at 0.5, {m['accuracy_at_youden']:.3f} at Youden "
                f"{m['youden_threshold']:.3f}"
            )
    if "at_model_threshold" in metrics:
        from ..workflows.training.operating_point import threshold_line

        print(threshold_line(metrics["at_model_threshold"]))
    for cls, rates in metrics.get("by_lesion_class", {}).items():
        what = "false-positive rate" if "false_positive_rate" in rates else "sensitivity"
        value = rates.get("false_positive_rate", rates.get("sensitivity"))
        print(f"  {cls}: {rates['slides']} slides, {what} {value:.3f} at {rates['threshold']:g}")
    if "froc" in metrics:
        score = metrics["froc"]["score"]
        print(f"FROC score {score:.3f}" if score is not None else f"FROC: {metrics['froc']['reason']}")
    print(f"wrote {args.out}/metrics.json, per_slide.csv, roc.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    device = command_device(args)
    requested = requested_mode(args)  # a combination of mode options that cannot be: one line, before any work
    stain = stain_request(args)  # a stain target fitted before any work
    from ..messages import slide_failure
    from ..outputs.names import RESULT_SUFFIXES, check_unique_names, prepare_output_folder
    from ..progress import Progress
    from ..workflows.bundle import load_bundle
    from ..workflows.inputs import find_slides
    from ..workflows.predict import predict_slide

    slides = find_slides(args.slides)
    out = args.out or ("." if args.heatmap else None)
    if out is not None:
        check_unique_names(slides, "results, heatmaps and GeoJSON")
    bundle = load_bundle(args.model, device=device)
    if stain is not None:  # the model's stain normalisation, or one line before any output
        requested = resolve(requested, bundle.feature_mode, bundle.name, stain)
    if out is not None:  # no result over an input; temporaries of killed runs removed
        prepare_output_folder(out, slides, RESULT_SUFFIXES, bundle.path.glob("*"))
    read = _read_options(args)  # once: it also sets torch's thread count
    results, failed = [], 0
    with Progress("predict", "tile") as bar:  # a bar on a terminal, a line every 30 s in a log (wsi_mamba.progress)
        for number, path in enumerate(slides, 1):
            bar.set_note(f"slide {number}/{len(slides)} {tsv_field(Path(path).name)}")  # one log line
            try:
                result = predict_slide(path, bundle, read, requested, out, args.heatmap, bar.update, bar.add_total)
            except Exception as exc:  # any per-slide failure (SlideError, OSError, ...): the others go on
                failed += 1
                bar.clear()
                message = slide_failure(path, exc)
                print(f"error: {message}", file=sys.stderr)
                results.append({"slide": str(path), "score": None, "error": message})
                continue
            results.append(result)
            if not args.json:
                bar.clear()
                name = tsv_field(result["slide"])  # one line per slide whatever its name holds
                if result["score"] is None:
                    print(f"{name}\tnull\t({result['reason']})")
                else:
                    print(f"{name}\t{result['score']:.4f}\t{result['prediction']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..threads import pinned_threads
    from ..workflows.recipe import load_recipe, run_recipe

    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name] = value
    recipe = load_recipe(args.recipe, overrides, args.workdir)
    # args.dispatch is the CLI's entry point (set by cli.build_parser): each step runs in this process
    with pinned_threads(args.threads):
        return run_recipe(recipe, args.dispatch, args.only, args.dry_run, log=lambda line: print(line, flush=True))
