"""Benchmark: one epoch of the finetune stage's phase 1 and phase 2, in seconds per image.

Builds the finetune model of a stages.yaml (augmentation, VGG16 preprocessing, the base, a new
dense head), then times one training epoch over the first ``--images`` training images of its
dataset view with the base frozen (phase 1), and one with block5 open (phase 2), without
validation passes. The cache must hold the dataset view (run ``pipeline run extract`` first).
Set against the extraction rate, this is what the augmentation-through-the-base recipes cost
per epoch compared with cached features or cached augmented copies. Run from the repository root:

    python -m bench.finetune_epoch --config /tmp/heads-bench/stages-local.yaml --images 96
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()

    from pipeline.config import load_config
    from pipeline.context import RunContext
    from pipeline.endtoend.finetune import base_of, build_finetune_model, open_layers
    from pipeline.endtoend.training import ImageBatches, image_split, trainable_view
    from pipeline.nn.optimizers import keras_optimizer
    from pipeline.nn.outputs import ClassifierOutput

    ctx = RunContext(load_config(args.config, ["stages.finetune.head_from=null"]))
    params = ctx.config.stages.finetune
    spec, view = ctx.spec, trainable_view(ctx)
    train = image_split(view, "train")
    n = min(args.images, len(train))
    subset = replace(train, paths=train.paths[:n], labels=train.labels[:n],
                     sha256=train.sha256[:n])
    batches = ImageBatches(subset, spec.decode, args.batch_size, shuffle=True)
    model = build_finetune_model(ctx, len(view.classes), None)
    base = base_of(model)
    loss = ClassifierOutput(len(view.classes)).loss
    rows = []
    for name, rate in (("phase 1 (base frozen)", params.frozen_learning_rate),
                       ("phase 2 (block5 open)", params.finetune_learning_rate)):
        if name.startswith("phase 2"):
            open_layers(base, params.unfrozen_layers())
        model.compile(keras_optimizer("rmsprop", rate), loss=loss, metrics=["accuracy"])
        model.fit(batches, epochs=1, steps_per_epoch=1, verbose=0)  # trace outside the clock
        started = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
        rows.append((name, seconds, seconds / n))
    print(f"{n} images of {spec.input_shape[0]}x{spec.input_shape[1]}, batch {args.batch_size}, "
          f"augmentation on, weights {ctx.config.backbone.weights}")
    print(f"{'epoch':<24} {'seconds':>8} {'s/image':>8} {'images/s':>9}")
    for name, seconds, per_image in rows:
        print(f"{name:<24} {seconds:>8.1f} {per_image:>8.3f} {1 / per_image:>9.1f}")


if __name__ == "__main__":
    main()
