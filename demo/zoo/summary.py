"""Print the zoo's fp32 baselines as Markdown: ``python -m demo.zoo.summary [--cache DIR]``.

For every zoo network: its fp32 metric on the test split, its training time (as recorded when it
was trained into the cache), its parameter count and its operation inventory; for MobileNetV2:
the fp32 statistics of the evaluation and calibration views (confident views, top classes per
photo, the class histogram). Runs on one thread; trains what the cache lacks.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch

from demo.zoo.inventory import op_inventory
from demo.zoo.metrics import class_histogram, confident_mask
from demo.zoo.mobilenet_v2 import imagenet_class_names, load_mobilenet_v2
from demo.zoo.registry import ZOO, cached_train_seconds, load_trained
from demo.zoo.views import ImageViews, calibration_views, evaluation_views


def zoo_table(cache_dir: Path | None) -> list[str]:
    lines = [
        "| network | metric (fp32, test split) | floor | train s | parameters | op kinds |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in ZOO.items():
        t = load_trained(name, cache_dir)
        seconds = t.train_seconds
        if seconds is None and cache_dir is not None:
            seconds = cached_train_seconds(name, cache_dir)
        inventory = op_inventory(t.model, concrete_args=t.data.kwargs or None)
        kinds = ", ".join(f"{k}×{v}" for k, v in sorted(inventory.items()) if k[0] != "_")
        unit = "%" if entry.metric == "accuracy" else " dB"
        params = sum(p.numel() for p in t.model.parameters())
        lines.append(
            f"| {name} | {entry.metric} {t.metric():.2f}{unit} | {entry.threshold}{unit} | "
            f"{seconds:.1f} | {params:,} | {kinds} |"
            if seconds is not None
            else f"| {name} | {entry.metric} {t.metric():.2f}{unit} | {entry.threshold}{unit} | "
            f"? | {params:,} | {kinds} |"
        )
    return lines


def views_report(title: str, views: ImageViews, logits: torch.Tensor) -> list[str]:
    names = imagenet_class_names()
    mask = confident_mask(logits)
    lines = [
        f"### {title}: {len(views)} views of {len(views.photos)} photos, "
        f"{int(mask.sum())} confident (fp32 top-1 probability ≥ 0.5)",
        "",
        "| photo | confident views | top-1 classes (count) |",
        "|---|---|---|",
    ]
    for i, photo in enumerate(views.photos):
        sel = views.photo == i
        counts = Counter(names[int(c)] for c in logits[sel].argmax(1))
        top = ", ".join(f"{n} ({k})" for n, k in counts.most_common(4))
        lines.append(f"| {photo} | {int(mask[sel].sum())}/{int(sel.sum())} | {top} |")
    hist = class_histogram(logits)
    lines += [
        "",
        f"{len(hist)} distinct top-1 classes; most frequent: "
        + ", ".join(f"{names[c]} ({k})" for c, k in hist.most_common(10)),
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".pytest_cache/d/zeropoint-zoo"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = ["## Zoo fp32 baselines", "", *zoo_table(args.cache), ""]
    model = load_mobilenet_v2()
    for title, views in (
        ("Evaluation views", evaluation_views()),
        ("Calibration views", calibration_views()),
    ):
        start = time.perf_counter()
        with torch.no_grad():
            logits = torch.cat([model(b) for b in views.batches(32)])
        seconds = time.perf_counter() - start
        out += views_report(title, views, logits)
        out.append(f"MobileNetV2 fp32 forward, batch 32, one thread: {seconds:.1f} s\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
