"""Benchmark: what the cache should store per image. Accuracy of linear probes (and one MLP) on
pooled VGG16 features, per choice of layers, pooling, mirroring and input size, against its
extraction cost.

One extraction per input size runs the VGG16 base of a stages.yaml (the repository's by default:
its weights, hed-bsds500 offline, and precision, bfloat16; float32 if that fails) over every
image of a labelled folder and over each image mirrored left-right (``x[:, :, ::-1]`` on the
decoded pixels), and pools, inside each batch, in float32: the global average (``gap``) and
maximum (``gmp``) of block3_conv3, block4_conv3 and block5_conv3, a 2x2 grid of averages
(``grid``: the four quadrants side by side; on an odd side the middle row or column belongs to
both halves, so that mirroring maps quadrants onto quadrants) of block3_conv3 and block4_conv3,
and the flattened block5_pool. The forward passes are timed on their own; the sizes and the two
copies of an image take turns batch by batch, so that another process on the CPU slows each of
them alike and their ratios stay meaningful. The pooled arrays go to
``bench/results/accuracy_choices_<data>.npz``, which later runs reuse (``--re-extract`` computes
them again).

Each candidate is a list of parts, each power-normalised on its own (signed square root, then unit
length: :func:`pipeline.heads.features.normalize_in_place`) and concatenated, and a way of using the
mirrored copy: none; ``flip-avg`` (each part averaged with the mirrored image's, grids mirrored
back, before normalising); ``rows`` (both copies as training rows, evaluated on the originals) and
``rows/flip-avg`` (the same, evaluated on the flip-averaged vectors). A logistic regression (C from
a grid, chosen on validation) is scored on ``--seeds`` seeded stratified 70/15/15 splits; the
tables give the mean and standard deviation of validation and test accuracy, and the test
accuracy's difference from the default before issue 20 (the six taps) on the same splits. After the
fixed candidates come, at each larger size, the best three (by validation) and the default; the
best multi-part candidate with one part scaled by 0.5 or 2 (part and weight chosen on validation);
and an MLP on it. It is done on every class, then on the two classes that the default confuses most
on validation (or ``--pair``). Cost: the forward passes' pixels relative to one pass at the first
size, which VGG16's FLOPs follow (the measured times' ratios are printed, but another process on
the CPU moves them). Run from the repository root:

    python -m bench.accuracy_choices --data ../shared/data/flowers-1000 --sizes 150 224 --seeds 5
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.heads.features import normalize_in_place

RESULTS = Path(__file__).parent / "results"
CONV_LAYERS = ("block3_conv3", "block4_conv3", "block5_conv3")
GRID_LAYERS = ("block3_conv3", "block4_conv3")
COPIES = ("original", "mirrored")
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
ALPHA_GRID = (0.01, 0.1, 1.0, 10.0)
PART_WEIGHTS = (0.5, 2.0)
FLIP_MODES = {  # how the mirrored copy is used: (the copies a model fits, the copy it scores)
    "none": (("original",), "original"),
    "flip-avg": (("flip-avg",), "flip-avg"),
    "rows": (("original", "mirrored"), "original"),
    "rows/flip-avg": (("original", "mirrored"), "flip-avg"),
}

DEFAULT = ("block3_conv3.gap", "block3_conv3.gmp", "block4_conv3.gap", "block4_conv3.gmp",
           "block5_conv3.gap", "block5_conv3.gmp")
B34_GAP = ("block3_conv3.gap", "block4_conv3.gap")
FIXED = {  # label: parts; each tried without and with flip averaging at the first size
    "six taps (the default before issue 20)": DEFAULT,
    "b4 gap": ("block4_conv3.gap",),
    "b3 gap + b4 gap": B34_GAP,
    "b3 + b4 gap+gmp": DEFAULT[:4],
    "b4 gap + b5 gap": ("block4_conv3.gap", "block5_conv3.gap"),
    "b5_pool flatten": ("block5_pool.flatten",),
    "b4 grid 2x2": ("block4_conv3.grid",),
    "b4 grid 2x2 + b3 gap + b4 gap": ("block4_conv3.grid", *B34_GAP),
}
# candidates also tried with both copies as training rows
ROWS = {"six taps (the default before issue 20)": DEFAULT, "b3 gap + b4 gap": B34_GAP}


@dataclass(frozen=True)
class Candidate:
    """What a probe reads: ``parts`` at input ``size``, the mirrored copy used as ``flip`` says
    (one of :data:`FLIP_MODES`), by logistic regression or (``model="mlp"``) an MLP; with
    ``weighted``, each part in turn scaled by each of :data:`PART_WEIGHTS` is tried too."""

    label: str
    parts: tuple[str, ...]
    size: int
    flip: str = "none"
    model: str = "logreg"
    weighted: bool = False

    @property
    def name(self) -> str:
        """The label, with what sets the candidate apart from the plain one."""
        extras = [f"{self.size}px" if self.size != 150 else "",
                  self.flip if self.flip != "none" else "",
                  "part weight" if self.weighted else "", "MLP" if self.model == "mlp" else ""]
        return ", ".join([self.label, *filter(None, extras)])


@dataclass
class Scores:
    """A candidate's results, one entry per split: validation and test accuracy, the setting
    chosen on validation, the validation predictions."""

    candidate: Candidate
    dims: int
    cost: float
    val: np.ndarray
    test: np.ndarray
    chosen: list[str]
    val_predictions: list[np.ndarray]


# ---- extraction ---------------------------------------------------------------------------

def build_pooling_model(spec):
    """The VGG16 base of ``spec`` to block5_pool, preprocessing inside, and in float32 every
    pooled part of this benchmark: ``{part: (N, d)}``."""
    from pipeline.backbone.model import build_vgg16_base
    from pipeline.nn.layers import VGG16Preprocess
    from pipeline.nn.runtime import keras

    base = build_vgg16_base(replace(spec, output_layer="block5_pool", taps=()))
    reads = (*CONV_LAYERS, "block5_pool")
    inner = keras.Model(base.input, [base.get_layer(layer).output for layer in reads])
    pixels = keras.Input(shape=spec.input_shape, name="rgb_pixels")
    maps = dict(zip(reads, inner(VGG16Preprocess()(pixels), training=False)))
    outputs = {}
    for layer in CONV_LAYERS:
        outputs[f"{layer}.gap"] = keras.layers.GlobalAveragePooling2D(name=f"{layer}_gap")(
            maps[layer])
        outputs[f"{layer}.gmp"] = keras.layers.GlobalMaxPooling2D(name=f"{layer}_gmp")(
            maps[layer])
    for layer in GRID_LAYERS:
        height, width = maps[layer].shape[1:3]
        halves = keras.layers.AveragePooling2D(
            pool_size=(-(-height // 2), -(-width // 2)), strides=(height // 2, width // 2),
            name=f"{layer}_grid")(maps[layer])
        outputs[f"{layer}.grid"] = keras.layers.Flatten(name=f"{layer}_grid_flat")(halves)
    as_float32 = keras.layers.Activation("linear", dtype="float32", name="pool_float32")
    outputs["block5_pool.flatten"] = keras.layers.Flatten(name="pool_flat")(
        as_float32(maps["block5_pool"]))
    return keras.Model(pixels, outputs, name="pooled_parts")


def compiled_for(config):
    """The compiled pooling model of ``config``'s backbone, warmed up (traced), and the
    precision it computes in: the configured one, or float32 if that one fails."""
    from pipeline.backbone.spec import backbone_spec
    from pipeline.nn.inference import compiled_inference

    spec = backbone_spec(config, allow_download=False)
    for precision in dict.fromkeys((spec.precision, "float32")):
        try:
            infer = compiled_inference(build_pooling_model(replace(spec, precision=precision)))
            infer(np.zeros((2, *spec.input_shape), np.float32))
            return infer, precision, spec.decode
        except Exception as exc:  # a precision the CPU or backend cannot run
            print(f"{precision} failed ({type(exc).__name__}: {exc}); trying float32")
    raise RuntimeError("the backbone runs in no precision")


def images_of(config) -> tuple[list, list[str]]:
    """The images of ``config.data`` (byte-identical copies once, none of an image filed under
    two classes), and the class names."""
    from pipeline.data.scan import scan_dataset

    scan = scan_dataset(config.data)
    labels_of: dict[str, set[str]] = {}
    for image in scan.images:
        labels_of.setdefault(image.sha256, set()).add(image.label)
    kept, seen = [], set()
    for image in scan.images:
        if len(labels_of[image.sha256]) == 1 and image.sha256 not in seen:
            kept.append(image)
        seen.add(image.sha256)
    if len(kept) < len(scan.images):
        print(f"{len(scan.images) - len(kept)} duplicate image files left out")
    return kept, scan.classes


def extract(config_path: Path, data: Path, sizes: list[int],
            batch_size: int) -> dict[str, np.ndarray]:
    """Every part of every image and of its mirror image at each size, with the backbone of
    the stages.yaml at ``config_path``; the forward passes' seconds, labels, classes and paths;
    as the arrays the .npz holds (``s150.mirrored.<part>``, ``s150.mirrored.seconds``, ...)."""
    from tqdm import tqdm

    from pipeline.config import load_config
    from pipeline.data.batches import BatchReader

    configs = {size: load_config(config_path, [f"data.root={data.resolve()}",
                                               f"data.image_size=[{size}, {size}]"])
               for size in sizes}
    images, classes = images_of(configs[sizes[0]])
    models = {size: compiled_for(config) for size, config in configs.items()}
    for size, (_, precision, _) in models.items():
        print(f"{size}x{size}: {configs[size].backbone.weights} weights, {precision} compute")
    readers = [BatchReader([image.path for image in images], [image.sha256 for image in images],
                           models[size][2], batch_size=batch_size) for size in sizes]
    parts: dict[str, list[np.ndarray]] = {}
    seconds = dict.fromkeys((f"s{size}.{copy}.seconds" for size in sizes for copy in COPIES), 0.0)
    for batches in tqdm(zip(*readers), total=len(readers[0]), desc="extract"):
        for size, batch in zip(sizes, batches):
            if not batch.ok.all():
                raise RuntimeError(f"could not decode: {batch.failures}")
            for copy, pixels in zip(COPIES, (batch.pixels,
                                             np.ascontiguousarray(batch.pixels[:, :, ::-1]))):
                start = time.perf_counter()
                features = models[size][0](pixels)
                seconds[f"s{size}.{copy}.seconds"] += time.perf_counter() - start
                for part, rows in features.items():
                    parts.setdefault(f"s{size}.{copy}.{part}", []).append(rows)
    return {**{key: np.concatenate(rows) for key, rows in parts.items()},
            **{key: np.float64(value) for key, value in seconds.items()},
            "labels": np.array([classes.index(image.label) for image in images]),
            "classes": np.array(classes), "paths": np.array([image.relpath for image in images]),
            "precision": np.array([models[size][1] for size in sizes])}


def load_or_extract(config_path: Path, data: Path, sizes: list[int], batch_size: int,
                    re_extract: bool) -> dict[str, np.ndarray]:
    """The saved arrays of ``data`` when they hold every size (unless ``re_extract``), else
    a new extraction, saved."""
    path = RESULTS / f"accuracy_choices_{data.resolve().name}.npz"
    if path.exists() and not re_extract:
        with np.load(path) as saved:
            arrays = dict(saved)
        if all(f"s{size}.original.seconds" in arrays for size in sizes):
            print(f"reusing {path} ({len(arrays['labels'])} images)")
            return arrays
    arrays = extract(config_path, data, sizes, batch_size)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    print(f"saved {path}")
    return arrays


def report_timing(arrays: dict[str, np.ndarray], sizes: list[int]) -> list[str]:
    """Lines on the forward passes' rates and their ratios (printed and written)."""
    images = len(arrays["labels"])
    seconds = {(size, copy): float(arrays[f"s{size}.{copy}.seconds"])
               for size in sizes for copy in COPIES}
    precision = ", ".join(dict.fromkeys(map(str, arrays["precision"])))
    lines = [f"Forward passes over {images} images ({precision} compute), sizes and copies "
             f"interleaved batch by batch:", ""]
    lines += [f"- {size}x{size} {copy}: {value:.1f} s, {images / value:.1f} img/s"
              for (size, copy), value in seconds.items()]
    base = seconds[(sizes[0], "original")]
    lines += [f"- {size}x{size} vs {sizes[0]}x{sizes[0]} (originals): "
              f"{seconds[(size, 'original')] / base:.2f}x (pixels: "
              f"{(size / sizes[0]) ** 2:.2f}x)" for size in sizes[1:]]
    lines += [f"- {size}x{size} two passes (original + mirrored) vs one: "
              f"{1 + seconds[(size, 'mirrored')] / seconds[(size, 'original')]:.2f}x"
              for size in sizes]
    return lines


# ---- features -----------------------------------------------------------------------------

def mirrored_back(rows: np.ndarray, part: str) -> np.ndarray:
    """A mirrored image's ``rows`` of ``part`` in the original's orientation: a 2x2 grid
    (row, column, channel order) has its left and right quadrants swapped; pools are left as
    they are."""
    if not part.endswith(".grid"):
        return rows
    return rows.reshape(len(rows), 2, 2, -1)[:, :, ::-1].reshape(len(rows), -1)


def part_rows(arrays: dict[str, np.ndarray], size: int, part: str, copy: str) -> np.ndarray:
    """One part, power-normalised: of the originals, the mirror images (mirrored back), or
    their average (``flip-avg``, averaged before normalising)."""
    original = arrays[f"s{size}.original.{part}"]
    mirrored = mirrored_back(arrays[f"s{size}.mirrored.{part}"], part)
    rows = {"original": original, "mirrored": mirrored,
            "flip-avg": (original + mirrored) / 2}[copy]
    return normalize_in_place(rows.astype(np.float32), "power")  # astype copies


@dataclass(frozen=True)
class Design:
    """The rows a model fits (one or more copies of every image, stacked) and the rows it is
    scored on, all (N, d) over the same N images; ``label`` says what was varied."""

    fit: tuple[np.ndarray, ...]
    score: np.ndarray
    label: str = ""


def designs_of(candidate: Candidate, arrays: dict[str, np.ndarray]) -> list[Design]:
    """The designs to choose from on validation: one, or with ``weighted`` also every part in
    turn scaled by each weight."""
    fit_copies, score_copy = FLIP_MODES[candidate.flip]
    copies = {copy: [part_rows(arrays, candidate.size, part, copy) for part in candidate.parts]
              for copy in dict.fromkeys((*fit_copies, score_copy))}
    scalings = [(None, 1.0)]
    if candidate.weighted:
        scalings += [(index, weight) for index in range(len(candidate.parts))
                     for weight in PART_WEIGHTS]

    def joined(copy: str, index: int | None, weight: float) -> np.ndarray:
        return np.concatenate([rows * (weight if i == index else 1.0)
                               for i, rows in enumerate(copies[copy])], axis=1)

    return [Design(tuple(joined(copy, index, weight) for copy in fit_copies),
                   joined(score_copy, index, weight),
                   "" if index is None else f"{candidate.parts[index]} x{weight:g}")
            for index, weight in scalings]


# ---- probes -------------------------------------------------------------------------------

def logistic(C: float, seed: int) -> LogisticRegression:  # noqa: N803 (scikit-learn's name)
    """A logistic regression at ``C`` (newton-cg: unit-norm parts want large C, where lbfgs
    crawls); deterministic, so ``seed`` is not needed."""
    return LogisticRegression(C=C, solver="newton-cg", max_iter=1000)


def mlp(alpha: float, seed: int) -> Pipeline:
    """Standardised inputs (unit-length parts have entries too small for Adam's steps: without
    it the MLP stopped early, far below the logistic regression), one hidden layer of 512
    ReLUs, early stopping on 10% of the training rows."""
    return make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(512,), alpha=alpha, early_stopping=True, n_iter_no_change=20,
        max_iter=500, random_state=seed))


MODELS = {"logreg": [(f"C={C:g}", partial(logistic, C)) for C in C_GRID],
          "mlp": [(f"alpha={alpha:g}", partial(mlp, alpha)) for alpha in ALPHA_GRID]}


def splits_of(labels: np.ndarray, seeds: int) -> list[tuple[np.ndarray, ...]]:
    """``seeds`` stratified 70/15/15 (train, validation, test) index splits."""
    splits = []
    for seed in range(seeds):
        train, rest = train_test_split(np.arange(len(labels)), test_size=0.3,
                                       stratify=labels, random_state=seed)
        val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest],
                                     random_state=seed)
        splits.append((train, val, test))
    return splits


def fit_and_score(designs: list[Design], model: str, labels: np.ndarray,
                  split: tuple[np.ndarray, ...], seed: int):
    """Fit every design with every setting of ``model`` on the training rows, keep the best
    on validation (the first of equals), score it on test: (val, test, chosen, predictions)."""
    train, val, test = split
    best = None
    for design in designs:
        x = np.concatenate([rows[train] for rows in design.fit])
        y = np.tile(labels[train], len(design.fit))
        for setting, make in MODELS[model]:
            fitted = make(seed).fit(x, y)
            predictions = fitted.predict(design.score[val])
            accuracy = float(np.mean(predictions == labels[val]))
            if best is None or accuracy > best[0]:
                best = (accuracy, fitted, design, " ".join(filter(None, (design.label, setting))),
                        predictions)
    accuracy, fitted, design, chosen, predictions = best
    return accuracy, fitted.score(design.score[test], labels[test]), chosen, predictions


def evaluate(candidate: Candidate, arrays: dict[str, np.ndarray], labels: np.ndarray,
             splits: list, cost: float, jobs: int) -> Scores:
    """``candidate`` fitted and scored on every split, in ``jobs`` processes."""
    designs = designs_of(candidate, arrays)
    results = Parallel(n_jobs=jobs)(delayed(fit_and_score)(designs, candidate.model, labels,
                                                           split, seed)
                                    for seed, split in enumerate(splits))
    val, test, chosen, predictions = zip(*results)
    return Scores(candidate, designs[0].score.shape[1], cost, np.array(val), np.array(test),
                  list(chosen), list(predictions))


def subset(arrays: dict[str, np.ndarray], classes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The arrays of the images of ``classes`` only, labels renumbered 0.."""
    keep = np.isin(arrays["labels"], classes)
    out = {key: value[keep] if value.ndim and len(value) == len(keep) else value
           for key, value in arrays.items()}
    out["labels"] = np.searchsorted(np.array(sorted(classes)), out["labels"])
    out["classes"] = arrays["classes"][sorted(classes)]
    return out


def most_confused(scores: Scores, labels: np.ndarray, splits: list) -> tuple[int, int]:
    """The two classes ``scores`` confuses most often with each other on validation."""
    count = Counter()
    for (_, val, _), predictions in zip(splits, scores.val_predictions):
        count.update(tuple(sorted((int(a), int(b))))
                     for a, b in zip(labels[val], predictions) if a != b)
    return count.most_common(1)[0][0]


def run_candidates(arrays: dict[str, np.ndarray], sizes: list[int], seeds: int,
                   jobs: int) -> list[Scores]:
    """Every candidate on the images of ``arrays``: the fixed ones, the best three (and the
    default) at each larger size, part weighting and an MLP on the best concatenation."""
    labels, splits = arrays["labels"], splits_of(arrays["labels"], seeds)

    def cost(candidate: Candidate) -> float:
        copies = 1 if candidate.flip == "none" else 2
        return copies * (candidate.size / sizes[0]) ** 2

    def run(candidate: Candidate) -> Scores:
        scores = evaluate(candidate, arrays, labels, splits, cost(candidate), jobs)
        print(f"  {candidate.name:<58} val {scores.val.mean():.3f} test {scores.test.mean():.3f}",
              flush=True)
        return scores

    first = sizes[0]
    results = [run(Candidate(label, parts, first, flip)) for label, parts in FIXED.items()
               for flip in ("none", "flip-avg")]
    results += [run(Candidate(label, parts, first, flip)) for label, parts in ROWS.items()
                for flip in ("rows", "rows/flip-avg")]
    ranked = sorted(results, key=lambda s: -s.val.mean())
    for size in sizes[1:]:
        again = [s.candidate for s in ranked[:3]]
        again += [s.candidate for s in results[:1] if s.candidate not in again]
        results += [run(replace(candidate, size=size)) for candidate in again]
    best = next(s.candidate for s in ranked if len(s.candidate.parts) > 1)
    results.append(run(replace(best, weighted=True)))
    results.append(run(replace(best, model="mlp")))
    return results


# ---- tables -------------------------------------------------------------------------------

def table(results: list[Scores]) -> list[str]:
    """A markdown table of ``results``; the test difference is paired with the first row's."""
    reference = results[0].test
    lines = ["| candidate | dims | cost | val mean ± sd | test mean ± sd | test − default "
             "(paired) ± sd | chosen on val (most often) |", "|---|---:|---:|---|---|---|---|"]
    for s in results:
        difference = s.test - reference
        chosen, times = Counter(s.chosen).most_common(1)[0]
        lines.append(f"| {s.candidate.name} | {s.dims} | {s.cost:.2f} | {s.val.mean():.3f} ± "
                     f"{s.val.std(ddof=1):.3f} | {s.test.mean():.3f} ± {s.test.std(ddof=1):.3f} "
                     f"| {difference.mean():+.3f} ± {difference.std(ddof=1):.3f} | "
                     f"{chosen} ({times}/{len(s.chosen)}) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("stages.yaml"),
                        help="whose backbone (weights, precision, decoding) to extract with")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 224],
                        help="input sizes; the first is the reference (cost 1.0)")
    parser.add_argument("--seeds", type=int, default=5, help="seeded 70/15/15 splits")
    parser.add_argument("--pair", nargs=2, default=None, metavar="CLASS",
                        help="the two-class subset (default: the two the default confuses most)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2, help="processes fitting the splits")
    parser.add_argument("--re-extract", action="store_true",
                        help="extract again even if the saved features hold every size")
    args = parser.parse_args()

    arrays = load_or_extract(args.config, args.data, args.sizes, args.batch_size,
                             args.re_extract)
    timing = report_timing(arrays, args.sizes)
    print("\n".join(timing))
    classes = [str(name) for name in arrays["classes"]]
    document = ["# What the cache stores per image: accuracy per extraction", "",
                f"Data: {args.data}; {args.seeds} seeded stratified 70/15/15 splits; cost: "
                f"forward-pass pixels relative to one {args.sizes[0]}x{args.sizes[0]} pass "
                f"(FLOPs follow them; measured ratios below). Command: `python -m "
                f"bench.accuracy_choices --data {args.data} --sizes "
                f"{' '.join(map(str, args.sizes))} --seeds {args.seeds}`", "", *timing]

    print(f"\nall {len(classes)} classes ({len(arrays['labels'])} images)")
    everything = run_candidates(arrays, args.sizes, args.seeds, args.jobs)
    if args.pair:
        pair = tuple(sorted(classes.index(name) for name in args.pair))
        why = "given by --pair"
    else:
        pair = most_confused(everything[0], arrays["labels"],
                             splits_of(arrays["labels"], args.seeds))
        why = "the two classes the default confuses most with each other on validation"
    two = subset(arrays, pair)
    names = " vs ".join(classes[i] for i in pair)
    print(f"\n{names} ({len(two['labels'])} images; {why})")
    pairwise = run_candidates(two, args.sizes, args.seeds, args.jobs)

    for title, results in ((f"All {len(classes)} classes ({len(arrays['labels'])} images)",
                            everything),
                           (f"{names} ({len(two['labels'])} images; {why})", pairwise)):
        lines = ["", f"## {title}", "", *table(results)]
        print("\n".join(lines))
        document += lines
    out = RESULTS / "accuracy_choices.md"
    out.write_text("\n".join(document) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
