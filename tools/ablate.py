"""Why the baseline's clean accuracy differs from the write-up's: baseline trainings under alternative settings.

    python -m tools.ablate --archive ../shared/data/cifar10-jpeg.tar.gz --out ablation.json

Each variant trains the baseline from params.yaml with a few keys changed (`--variants` picks them
by name) and reports validation and clean test accuracy of its head. `jpeg_again` re-encodes every
image once more as JPEG before training and testing: on the JPEG archive, its accuracy drop
estimates what the archive's own JPEG encoding costs against the official images. A GPU job: on
a CPU, shorten it (`--set train.epochs=2 --set model.width=8`).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robust_cifar.check_params import validate_params
from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.data.archive import read_archive
from robust_cifar.data.arrays import CifarArrays
from robust_cifar.data.split import SplitConfig, stratified_split
from robust_cifar.evaluation.inference import embed_and_classify
from robust_cifar.model import ModelConfig
from robust_cifar.outputs import check_report_file, write_json
from robust_cifar.params import SET_WITH_S, Params, load_params, set_dotted, with_overrides
from robust_cifar.signals import run_tool
from robust_cifar.training.methods.registry import REFERENCE_METHOD, build_method
from robust_cifar.training.train import SplitTensors, TrainConfig, TrainingSetup, train_model


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict = field(default_factory=dict)   # dotted params key -> value
    jpeg_again: bool = False


VARIANTS = (
    Variant("defaults"),
    Variant("dropout_0.1", {"model.dropout": 0.1}),
    Variant("last_batch_scheduler", {"train.lr_schedule_on": "last_batch"}),
    Variant("notebook_settings", {"model.dropout": 0.1, "train.lr_schedule_on": "last_batch"}),
    Variant("jpeg_again", jpeg_again=True),
)


REPORT_KEYS = {"common_changes", "results"}   # what --out holds


def is_report(path: Path) -> bool:
    """Whether `path` holds an earlier report of this tool (which --out may replace)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and set(report) == REPORT_KEYS


def reencode_jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    """Every uint8 NCHW image through one more JPEG encode/decode (the archive's quality is about 75)."""
    out = np.empty_like(images)
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(np.transpose(image, (1, 2, 0))).save(buffer, format="JPEG", quality=quality)
        out[index] = np.transpose(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")), (2, 0, 1))
    return out


def with_changes(raw: dict, changes: dict) -> Params:
    edited = copy.deepcopy(raw)
    for key, value in changes.items():
        set_dotted(edited, key, value)
    return Params(edited)


def run_variant(variant: Variant, raw: dict, arrays: CifarArrays, reencoded: CifarArrays | None) -> dict:
    params = with_changes(raw, variant.changes)
    data = reencoded if variant.jpeg_again else arrays
    compute = Compute.from_config(ComputeConfig.from_params(params))
    seed = params.train_seeds()[0]   # the first training seed: the reference's first model
    split = SplitConfig.from_params(params)
    train_index, val_index = stratified_split(data.train_labels, split.train_fraction, params.seed("split"),
                                              split.val_per_class)

    def tensors(images, labels):
        return SplitTensors(torch.from_numpy(images).to(compute.device), torch.from_numpy(labels).to(compute.device))

    train = tensors(data.train_images[train_index], data.train_labels[train_index])
    val = tensors(data.train_images[val_index], data.train_labels[val_index])
    test = tensors(data.test_images, data.test_labels)
    torch.manual_seed(seed)
    model = compute.prepare(ModelConfig.from_params(params).build(len(data.class_names)))
    setup = TrainingSetup(method=build_method(REFERENCE_METHOD, params), train=TrainConfig.from_params(params),
                          compute=compute, seed=seed, num_classes=len(data.class_names),
                          eval_batch_size=ComputeConfig.from_params(params).eval_batch_size)
    started = time.perf_counter()
    history = train_model(setup, model, train, val, progress=False)
    seconds = time.perf_counter() - started
    _, logits = embed_and_classify(model, test.images, compute, setup.eval_batch_size)
    validated = [row for row in history if "val_acc" in row]
    lr_drops = [row["epoch"] for previous, row in zip(history, history[1:]) if row["lr"] < previous["lr"]]
    return {"variant": variant.name, "changes": variant.changes, "jpeg_again": variant.jpeg_again,
            "device": compute.describe(), "epochs": len(history), "seconds": round(seconds, 1),
            "train_acc_running": round(history[-1]["train_acc"], 4),
            "val_acc": round(validated[-1]["val_acc"], 4), "best_val_acc": round(max(r["val_acc"] for r in validated), 4),
            "test_acc": round((logits.argmax(1) == test.labels).float().mean().item(), 4),
            "lr_drop_epochs": lr_drops, "final_lr": history[-1]["lr"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True, help="a CIFAR-10 archive (official or image folder)")
    parser.add_argument("--archive-md5", default="")
    parser.add_argument("--variants", nargs="*", default=[v.name for v in VARIANTS],
                        choices=[v.name for v in VARIANTS])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml change for every variant (YAML value), e.g. train.val_every=10")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)

    edited = with_overrides(load_params(), args.set, set_with=SET_WITH_S)   # `dvc exp run -S`'s grammar
    validate_params(edited)
    if not args.variants:
        parser.error("--variants: name at least one (or leave it out: every variant)")
    if args.out is not None:   # not after the first variant's training
        check_report_file(args.out, "--out", ".json", "ablation.json", earlier=is_report)
    common = dict(item.split("=", 1) for item in args.set)
    raw = edited.raw
    arrays = read_archive(args.archive, args.archive_md5)
    chosen = [variant for variant in VARIANTS if variant.name in args.variants]
    reencoded = None
    if any(variant.jpeg_again for variant in chosen):
        started = time.perf_counter()
        reencoded = CifarArrays(reencode_jpeg(arrays.train_images), arrays.train_labels,
                                reencode_jpeg(arrays.test_images), arrays.test_labels, arrays.class_names)
        print(f"re-encoded {len(arrays.train_labels) + len(arrays.test_labels)} images in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    results = []
    for variant in chosen:
        results.append(run_variant(variant, raw, arrays, reencoded))
        print(json.dumps(results[-1]), flush=True)
        if args.out:
            write_json(args.out, {"common_changes": common, "results": results})   # whole or not at all, each time


if __name__ == "__main__":
    run_tool(main)
