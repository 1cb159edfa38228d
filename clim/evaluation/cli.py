"""``clim eval knn|linear|semisup|similarity|tsne`` and ``clim export`` (METHOD §5).

Every protocol evaluates a trainer checkpoint's (``--ckpt``) query backbone on the labelled splits
of its pretraining dataset (or others via ``--set``) and writes one JSON file (default
``<checkpoint folder>/eval/<protocol>.json``): the numbers (accuracy keys contain ``top1``) and every
setting that produced them. A missing file or a bad key is one line with exit code 2 (``clim``'s main()).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from clim.config import Config, ConfigError, parse_overrides

# torch and clim.evaluation.common are imported inside the handlers: building the parser (`clim --help`)
# must not import torch.


REFERENCE_MAX_IMAGES = 20_000  # train + test: the raw-pixel references take seconds to a minute on a CPU


def versus(value: float, reference: float, label: str) -> str:
    """``below raw pixels at 16 px by 0.36 points`` (differences under 0.005 read as level)."""
    difference = value - reference
    if abs(difference) < 0.005:
        return f"level with {label}"
    return f"{'above' if difference > 0 else 'below'} {label} by {abs(difference):.2f} points"


def positive_int(text: str) -> int:
    """argparse type for counts (also used by `clim ablate`)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _checked_first(handler, args: argparse.Namespace) -> int:
    """Run ``handler`` after trying each ``--set`` on the default config, so that an unknown key or a
    value of the wrong type fails before torch loads (~4 s); the checkpoint's config then takes them."""
    defaults = Config()
    for key, value in parse_overrides(args.overrides).items():
        defaults.set(key, value)
    return handler(args)


def _add_protocol(protocols, name: str, handler, help: str) -> argparse.ArgumentParser:
    """A ``clim eval`` sub-command with the options every protocol takes."""
    parser = protocols.add_parser(name, help=help)
    parser.add_argument("--ckpt", required=True, help="trainer checkpoint (or its run folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="evaluate on other data, e.g. --set data.name=cifar10 --set data.root=DIR")
    parser.add_argument("--out", help="result JSON (default: <checkpoint folder>/eval/<protocol>.json)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="feature extraction and training batch (protocols: 256)")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the checkpoint's data.num_workers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=functools.partial(_checked_first, handler))
    return parser


def _pixel_reference(session, train_ds, test_ds, linear: bool) -> dict:
    """Raw pixels at the evaluated resolution (the checkpoint's training one unless ``--set data.image_size``)
    by the same kNN (k = 20, T = 0.07) and, with ``linear``, a ridge classifier, when cheap (array data of at
    most REFERENCE_MAX_IMAGES images); else why not. Flat ``raw_pixels_*`` keys for the result file."""
    size = session.spec.image_size
    keys = {"raw_pixels_image_size": size, "raw_pixels_resolution": "the checkpoint's training resolution"
            if size == session.run.data_info["image_size"] else "the evaluated resolution (--set data.image_size)"}
    total = len(train_ds) + len(test_ds)
    if not hasattr(train_ds, "images") or total > REFERENCE_MAX_IMAGES:
        why = f"{total} images" if hasattr(train_ds, "images") else "image files, not arrays"
        return {**keys, "raw_pixels_reference": f"not computed ({why}: too slow beside an evaluation; "
                                                f"computed for array data of at most {REFERENCE_MAX_IMAGES} images)"}
    from clim.evaluation.references import pixel_references

    found = pixel_references(session.spec.name, session.spec.root, size, linear=linear)
    keys.update({"raw_pixels_reference": "computed by clim.evaluation.references.pixel_references",
                 "raw_pixels_knn_k20_top1": found["pixel_knn_top1"]})
    if linear:
        keys.update({"raw_pixels_ridge_top1": found["pixel_linear_top1"],
                     "raw_pixels_ridge_alpha": found["pixel_linear_alpha"]})
    return keys


def _reference_text(reference: dict, trained: float, key: str, what: str) -> str:
    """``raw pixels at 16 px (...): kNN k=20 83.05% (below raw pixels at 16 px by 0.36 points)``."""
    size = reference["raw_pixels_image_size"]
    if key not in reference:
        return f"raw pixels at {size} px: {reference['raw_pixels_reference']}"
    label = "raw pixels" if key == "raw_pixels_knn_k20_top1" else "the ridge on raw pixels"
    others = [f"{name} {reference[other]:.2f}%" for other, name in (("raw_pixels_knn_k20_top1", "kNN k=20"),
                                                                    ("raw_pixels_ridge_top1", "ridge"))
              if other in reference]
    return (f"raw pixels at {size} px ({reference['raw_pixels_resolution']}): {', '.join(others)}; "
            f"{what} is {versus(trained, reference[key], f'{label} at {size} px')}")


def _knn(args: argparse.Namespace) -> int:
    from clim.evaluation import common
    from clim.evaluation.knn import KNN_SETTINGS, run_knn

    session = common.Session(args, "knn")
    train_ds, test_ds = session.datasets()
    results = run_knn(*session.features(train_ds), *session.features(test_ds), common.num_classes_of(train_ds),
                      device=session.device)
    reference = _pixel_reference(session, train_ds, test_ds, linear=False)
    record = {**session.settings("knn", train=train_ds, test=test_ds), **results,
              "knn_settings": [{"k": k, "temperature": t} for k, t in KNN_SETTINGS],
              "features": "query backbone, pooled, L2-normalised; cosine similarity; votes exp(s/T)", **reference}
    return session.finish(record, "kNN " + ", ".join(f"{k}: {v:.2f}%" for k, v in results.items())
                          + f" on {len(test_ds)} test images; "
                          + _reference_text(reference, results["knn_k20_top1"], "raw_pixels_knn_k20_top1",
                                            "the trained kNN k=20"))


def _lr_value(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _linear_lr(args: argparse.Namespace, session, preset, train_features) -> tuple[float, dict]:
    """The linear classifier's lr and what the result file says about its choice: ``--lr auto`` (the
    default) picks it on cached features of held-out training images (``train_features()``), never
    the test split; a number is used as given (30: the paper's protocol)."""
    from clim.evaluation import common
    from clim.evaluation.linear import LINEAR_PRESETS, PROBE_HOLDOUT, PROBE_LRS, choose_lr

    if args.lr != "auto":
        lr = float(args.lr)
        paper = " (the paper's protocol)" if lr == LINEAR_PRESETS["paper"].lr else ""
        return lr, {"lr_rule": f"fixed by --lr{paper}"}
    train_ds, feats, labels = train_features()
    lr, sweep = choose_lr(feats, labels, common.num_classes_of(train_ds), replace(preset, batch_size=args.batch_size),
                          args.seed, session.device, progress=session.progress)
    return lr, {"lr_rule": f"auto: the best held-out top-1 of lrs {list(PROBE_LRS)}, each trained on "
                           f"{1 - PROBE_HOLDOUT:g} of the train split's cached features and scored on the other "
                           f"{PROBE_HOLDOUT:g} (class-stratified); the test split is not read",
                "lr_sweep": sweep, "lr_sweep_holdout": PROBE_HOLDOUT}


def _linear(args: argparse.Namespace) -> int:
    from clim.evaluation import common
    from clim.evaluation.linear import (LINEAR_PRESETS, above_chance_loss, linear_on_backbone, linear_on_features,
                                        resolve_preset)

    session = common.Session(args, "linear")
    name, preset = resolve_preset(args.preset, session.spec.image_size, LINEAR_PRESETS)
    if args.epochs is not None:  # the decay points stay at the same fractions of training
        milestones = {max(1, round(m * args.epochs / preset.epochs)) for m in preset.milestones if m < preset.epochs}
        preset = replace(preset, epochs=args.epochs, milestones=tuple(sorted(milestones)))

    @functools.cache
    def train_features():  # un-augmented train images: the lr sweep's and --cached-features' (extracted once)
        train_ds = session.dataset("train")
        feats, labels = session.features(train_ds)
        return train_ds, feats[labels >= 0], labels[labels >= 0]

    lr, lr_record = _linear_lr(args, session, preset, train_features)
    preset = replace(preset, batch_size=args.batch_size, lr=lr)
    if args.cached_features:
        train_ds, train_feats, train_labels = train_features()
        test_ds = session.dataset("test")
        classes = common.num_classes_of(train_ds)
        results = linear_on_features(train_feats, train_labels, *session.features(test_ds), classes,
                                     preset, args.seed, session.device, session.progress)
    else:
        train_ds, test_ds = session.datasets(common.crop_flip_transform(session.spec, preset.crop_scale))
        classes = common.num_classes_of(train_ds)
        results = linear_on_backbone(session.run.model.backbone_q, train_ds, test_ds, classes, preset, args.seed,
                                     session.device, session.num_workers, session.progress)
    above = above_chance_loss(results["final_train_loss"], classes)
    reference = _pixel_reference(session, train_ds, test_ds, linear=True)
    record = {**session.settings("linear", train=train_ds, test=test_ds), **results, "preset": name,
              **asdict(preset), **lr_record, "train_loss_above_chance": above, "num_classes": classes, **reference,
              "cached_features": args.cached_features,
              "train_augmentation": ("none (cached features of un-augmented images; deviation from METHOD §5)"
                                     if args.cached_features else
                                     f"RandomResizedCrop(scale={list(preset.crop_scale)}) + horizontal flip")}
    top1 = results["linear_top1"]
    return session.finish(record, f"linear top-1 {top1:.2f}% on {len(test_ds)} test images ({name}, {preset.epochs} "
                                  f"epochs, lr {preset.lr:g}, final train loss {results['final_train_loss']:.3f}); "
                                  + _reference_text(reference, top1, "raw_pixels_ridge_top1", "the trained linear probe"))


def _semisup(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from clim.evaluation import common
    from clim.evaluation.linear import resolve_preset
    from clim.evaluation.semisup import SEMISUP_PRESETS, balanced_subset, finetune, save_subset, split_file_subset

    if (args.fraction is None) == (args.split_file is None):
        raise ConfigError("eval semisup needs exactly one of --fraction and --split-file")
    if args.fraction is not None and not 0.0 < args.fraction <= 1.0:
        raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction}")
    tag = f"{args.fraction * 100:g}pct" if args.fraction is not None else Path(args.split_file).stem
    session = common.Session(args, f"semisup_{tag}")
    name, preset = resolve_preset(args.preset, session.spec.image_size, SEMISUP_PRESETS)
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs,
                         step_every=max(1, round(preset.step_every * args.epochs / preset.epochs)))
    overrides = {key: getattr(args, key) for key in ("lr_backbone", "lr_fc", "weight_decay")
                 if getattr(args, key) is not None}
    preset = replace(preset, batch_size=args.batch_size, **overrides)
    train_ds, test_ds = session.datasets(common.crop_flip_transform(session.spec, preset.crop_scale))
    if args.split_file is not None:
        if not hasattr(train_ds, "path"):
            raise ConfigError("--split-file needs an image-folder dataset (file names to match)")
        indices = split_file_subset([train_ds.path(i).name for i in range(len(train_ds))], args.split_file)
        subset_source = {"split_file": str(Path(args.split_file).resolve())}
    else:
        indices = balanced_subset(train_ds.labels, args.fraction, args.seed)
        subset_source = {"fraction": args.fraction, "seed": args.seed, "class_balanced": True}
    subset_path = save_subset(session.out.with_suffix(".subset.json"), indices, dataset=session.spec.name,
                              **subset_source)
    classes = common.num_classes_of(train_ds)
    backbone, feature_dim = common.plain_backbone(session.run.config, session.run.data_info, session.run.model)
    results = finetune(backbone, feature_dim, Subset(train_ds, indices.tolist()), test_ds, classes, preset,
                       args.seed, session.device, session.num_workers, session.progress)
    record = {**session.settings("semisup", train=train_ds, test=test_ds), **results, "preset": name, **asdict(preset),
              **subset_source, "labelled_size": int(indices.numel()), "subset_file": str(subset_path),
              "num_classes": classes,
              "train_augmentation": f"RandomResizedCrop(scale={list(preset.crop_scale)}) + horizontal flip"}
    return session.finish(record, f"semi-supervised ({tag}) top-1 {results['semisup_top1']:.2f}%")


def _similarity(args: argparse.Namespace) -> int:
    from clim.evaluation.common import Session
    from clim.evaluation.similarity import intra_class_similarity

    session = Session(args, "similarity")
    dataset = session.dataset(args.split)
    results = intra_class_similarity(*session.features(dataset))
    results["per_class"] = {str(k): v for k, v in results["per_class"].items()}
    record = {**session.settings("similarity", **{args.split: dataset}), "split": args.split, **results,
              "features": "query backbone, pooled; cosine over intra-class pairs i != j, mean over classes"}
    return session.finish(record, f"intra-class similarity {results['intra_class_similarity']:.4f} "
                                  f"(all pairs {results['all_pairs_similarity']:.4f})")


def _class_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes must be comma-separated integers, got '{text}'") from None


def _tsne(args: argparse.Namespace) -> int:
    from clim.evaluation.common import Session
    from clim.evaluation.tsne import run_tsne

    session = Session(args, "tsne")
    dataset = session.dataset(args.split)
    feats, labels = session.features(dataset)
    title = f"{session.run.config.method.name} {session.run.config.model.backbone}, epoch {session.run.epoch}"
    results = run_tsne(feats, labels, session.out.with_suffix(".png"), _class_list(args.classes),
                       args.max_points, args.seed, args.perplexity, getattr(dataset, "classes", None), title)
    record = {**session.settings("tsne", **{args.split: dataset}), "split": args.split, **results}
    return session.finish(record, f"t-SNE of {results['num_points']} points -> {results['png']}")


def _export(args: argparse.Namespace) -> int:
    from clim.evaluation.export import export_detectron2, export_torchvision

    exporter = export_torchvision if args.to == "torchvision" else export_detectron2
    info = exporter(args.ckpt, args.out)
    print(json.dumps(info, indent=2))
    if args.to == "torchvision":  # stdout stays one JSON document; the line to copy goes to stderr
        print(f"load it with (checked: loads strictly): {info['load']}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``eval`` (with its protocols) and ``export`` to the ``clim`` argparse sub-commands."""
    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint (kNN, linear, semi-supervised, ...)")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)

    _add_protocol(protocols, "knn", _knn, "weighted kNN top-1 (k=20 T=0.07 and k=200 T=0.1)")

    linear = _add_protocol(protocols, "linear", _linear, "linear classifier on the frozen backbone")
    linear.add_argument("--preset", default="auto", choices=["auto", "paper", "small", "quick"],
                        help="auto: paper above 64 px, small at or below (see clim.evaluation.linear)")
    linear.add_argument("--epochs", type=positive_int, help="override the preset's epochs (decay points scale along)")
    linear.add_argument("--lr", type=_lr_value, default="auto",
                        help="auto (the default): the best of lrs 0.1, 0.3, 1, 3, 10, 30, each trained on cached "
                             "features of 80 %% of the train split and scored on the other 20 %% (the test split "
                             "is not read); a number fixes it: --lr 30 is the paper's protocol")
    linear.add_argument("--cached-features", action="store_true",
                        help="train on features of un-augmented images extracted once (fast; "
                             "drops the train augmentation, a deviation from the protocol)")

    semisup = _add_protocol(protocols, "semisup", _semisup, "fine-tune all layers on 1%% / 10%% of the labels")
    semisup.add_argument("--fraction", type=float, help="labelled fraction, e.g. 0.01 or 0.1 (class-balanced, seeded)")
    semisup.add_argument("--split-file", help="SimCLR split file (image file names, one per line) for image folders")
    semisup.add_argument("--preset", default="auto", choices=["auto", "paper", "small", "quick"])
    semisup.add_argument("--epochs", type=positive_int, help="override the preset's epochs (decay period scales along)")
    semisup.add_argument("--lr-backbone", type=float, help="paper: 1e-4")
    semisup.add_argument("--lr-fc", type=float, help="paper: 10")
    semisup.add_argument("--weight-decay", type=float, help="default 0")

    similarity = _add_protocol(protocols, "similarity", _similarity, "mean intra-class cosine similarity (Table 12)")
    tsne = _add_protocol(protocols, "tsne", _tsne, "t-SNE plot of 10 classes (Fig. 3), PNG next to the JSON")
    for parser in (similarity, tsne):
        parser.add_argument("--split", default="test", choices=["train", "test"])
    tsne.add_argument("--classes", help="comma-separated labels (default: the first 10)")
    tsne.add_argument("--max-points", type=positive_int, default=2000)
    tsne.add_argument("--perplexity", type=float, default=30.0)

    export = subparsers.add_parser("export", help="export the backbone for torchvision or detectron2")
    export.add_argument("--ckpt", required=True, help="trainer checkpoint (or its run folder)")
    export.add_argument("--to", required=True, choices=["torchvision", "detectron2"])
    export.add_argument("--out", required=True, help="output file (.pth / .safetensors, or .pkl)")
    export.set_defaults(func=_export)
