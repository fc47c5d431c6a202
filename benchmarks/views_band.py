"""How the views-on-demand band was chosen: patch AUC of every candidate band against all views, from each patch's
per-view logits (issue 22, item 2).

    wsi-mamba split-patches ../shared/data/pcam/train --out split           # the encoder's own carved validation
    python benchmarks/views_band.py split/validation.csv                    # choose here (never on PCam valid)
    python benchmarks/views_band.py ../shared/data/pcam/valid               # report only

The encoder (``--model``, default the shipped model's) scores every patch in each of its ``--views`` dihedral
views once; a band [lo, hi] then gives each patch the mean logit of all views when its first-view probability is in
the band and its first-view logit otherwise, exactly as ``TileEncoder.views_on_demand`` does (its head is linear).
The chosen band is the narrowest candidate whose AUC is within ``--tolerance`` (0.001) of all views'. "cost" is
the views run per patch (1 + (views - 1) x the share in the band) and "speed" all views' cost over it; on a slide's
tiles the share differs (``bench_views_on_demand.py`` measures it).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

BANDS = ((0.3, 0.7), (0.2, 0.8), (0.1, 0.9), (0.05, 0.95), (0.02, 0.98), (0.01, 0.99))


def view_logits(source, encoder, views: int, batch: int = 128) -> np.ndarray:
    """(views, n) tumour logits of every patch of ``source`` in each dihedral view."""
    from wsi_mamba.models.encoders.base import dihedral_views

    out = np.zeros((views, len(source)), np.float32)
    with torch.inference_mode():
        for start in range(0, len(source), batch):
            indices = np.arange(start, min(len(source), start + batch))
            x = encoder.preprocess(np.ascontiguousarray(source.read(indices)))
            for k, view in enumerate(dihedral_views(x, views)):
                out[k, indices] = encoder.logits_from_features(encoder.features(view))[:, 0].float().numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patches", help="labelled patches (folder, CSV, PCam h5)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sklearn.metrics import roc_auc_score

    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.workflows.bundle import load_bundle, model_path

    source = open_patches(args.patches)
    labels = np.asarray(source.labels)
    logits = view_logits(source, load_bundle(model_path(args.model)).encoder, args.views)
    first, every = logits[0], logits.mean(0)
    full = roc_auc_score(labels, every)
    p = 1 / (1 + np.exp(-first))
    print(
        f"{len(labels)} patches of {args.patches}: AUC 1 view {roc_auc_score(labels, first):.4f}, "
        f"{args.views} views {full:.4f}",
        file=sys.stderr,
    )
    print("| band | patches in band | views per patch | speed | AUC | Δ AUC vs all views | accuracy at 0.5 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    chosen = None
    for lo, hi in BANDS:
        inside = (p >= lo) & (p <= hi)
        scores = np.where(inside, every, first)
        auc = roc_auc_score(labels, scores)
        cost = 1 + (args.views - 1) * inside.mean()
        if chosen is None and auc >= full - args.tolerance:
            chosen = (lo, hi)
        print(
            f"| [{lo:g}, {hi:g}] | {100 * inside.mean():.1f} % | {cost:.2f} | {args.views / cost:.2f}x | "
            f"{auc:.4f} | {auc - full:+.4f} | {((scores >= 0) == labels).mean():.4f} |"
        )
    print(f"narrowest band within {args.tolerance} of all views: {chosen}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
