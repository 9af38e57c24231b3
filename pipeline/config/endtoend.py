"""The end-to-end sections of stages.yaml: augmentation, ``stages.finetune`` and ``stages.scratch``.

::

    stages:
      finetune:
        augmentation: {horizontal_flip: true, rotation: 40, width_shift: 0.2,
                       height_shift: 0.2, shear: 0.2, zoom: 0.2, fill_mode: constant}
        head_from: auto            # the newest dense head trained on this cache, or a path, or null
        frozen_epochs: 30          # phase 1: base frozen, head trained through augmentation
        finetune_epochs: 100       # phase 2: ``unfreeze`` opened, lower learning rate
        unfreeze: [block5]         # block or layer names, or the index of the first base layer
      scratch: {epochs: 5}         # the from-scratch CNN baseline on the same splits

Checked when the file is read, like every other section; nothing here imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import vgg16
from ._base import OPTIMIZERS, Bool, Float, Int, Section, resolve_path


class AugmentConfig(Section):
    """Random image transforms, each off at 0 / false. Defaults are the reference recipe's.

    ``rotation`` is in degrees (up to +-40); shifts and zoom are fractions of the image side;
    ``shear`` is the horizontal shear as a fraction of the width (Keras' ``RandomShear``; the
    old ``ImageDataGenerator`` read the same number as an angle in degrees). Areas the transform
    uncovers are filled by ``fill_mode`` (``constant`` fills ``fill_value``, 0 = black).
    """

    horizontal_flip: Bool = True
    """Mirror left-right at random."""
    rotation: Float = Field(40.0, ge=0, le=180)
    """Largest random rotation, degrees either way."""
    width_shift: Float = Field(0.2, ge=0, lt=1)
    """Largest horizontal shift, a fraction of the width."""
    height_shift: Float = Field(0.2, ge=0, lt=1)
    """Largest vertical shift, a fraction of the height."""
    shear: Float = Field(0.2, ge=0, le=1)
    """Largest horizontal shear, a fraction of the width."""
    zoom: Float = Field(0.2, ge=0, lt=1)
    """Largest zoom in or out, a fraction of the side."""
    fill_mode: Literal["constant", "nearest", "reflect", "wrap"] = "constant"
    """How uncovered areas are filled: ``constant``, ``nearest``, ``reflect`` or ``wrap``."""
    fill_value: Float = Field(0.0, ge=0, le=255)
    """The pixel value ``constant`` fills with (0: black)."""

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return self.horizontal_flip or any(
            v > 0 for v in (self.rotation, self.width_shift, self.height_shift, self.shear,
                            self.zoom))


def _no_augmentation() -> AugmentConfig:
    return AugmentConfig(horizontal_flip=False, rotation=0.0, width_shift=0.0,
                         height_shift=0.0, shear=0.0, zoom=0.0)


class FinetuneConfig(Section):
    """The end-to-end stage: augmentation through the frozen base, then block5 fine-tuning."""

    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    """Random transforms of the training images, applied in the model on every epoch."""
    head_from: Optional[Union[Literal["auto"], Path]] = "auto"
    """``auto``: the newest dense head the heads stage trained on this backbone's cache for the
    same classes; a path: that head's folder (``runs/<run>/heads/<name>``); null: a new head of
    ``units`` and ``dropout``."""
    units: Int = Field(256, ge=1, le=65_536)
    """A new head's hidden layer."""
    dropout: Float = Field(0.5, ge=0, lt=1)
    """A new head's dropout rate."""
    batch_size: Int = Field(20, ge=1, le=4096)
    """Images per gradient step."""
    frozen_epochs: Int = Field(30, ge=0, le=100_000)
    """Phase 1, base frozen: most epochs (0 skips the phase)."""
    frozen_optimizer: Literal[OPTIMIZERS] = "rmsprop"  # type: ignore[valid-type]
    """Phase 1's Keras optimizer."""
    frozen_learning_rate: Float = Field(2e-5, gt=0, le=10)
    """Phase 1's learning rate."""
    finetune_epochs: Int = Field(100, ge=0, le=100_000)
    """Phase 2, ``unfreeze`` opened: most epochs (0 skips the phase)."""
    finetune_optimizer: Literal[OPTIMIZERS] = "rmsprop"  # type: ignore[valid-type]
    """Phase 2's Keras optimizer."""
    finetune_learning_rate: Float = Field(1e-5, gt=0, le=10)
    """Phase 2's learning rate (lower, so the opened layers move little)."""
    unfreeze: Union[Int, list[str]] = Field(default_factory=lambda: ["block5"])
    """Base layers phase 2 trains: blocks (``block5``), layers (``block4_conv3``), or the index
    of the first trainable base layer (15 = block5_conv1)."""
    patience: Optional[Int] = Field(10, ge=0)
    """Early stopping on validation accuracy, per phase; null: off."""
    restore_best: Bool = True
    """With early stopping, end each phase with its best validation epoch's weights."""
    seed: Int = 0
    """Seed of the augmentation, the new head's weights and the batch order."""

    @field_validator("unfreeze")
    @classmethod
    def _known_layers(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int):
            if not 1 <= value < len(vgg16.LAYERS):
                raise ValueError(f"a base layer index must be 1..{len(vgg16.LAYERS) - 1}")
            return value
        unknown = [name for name in value if name not in vgg16.LAYERS[1:] + vgg16.BLOCKS]
        if unknown:
            raise ValueError(f"unknown VGG16 layer or block {', '.join(unknown)} (blocks: "
                             f"block1..block5; layers such as block5_conv1)")
        return value

    @field_validator("head_from", mode="before")
    @classmethod
    def _path_or_auto(cls, value, info: ValidationInfo):
        if value is None or value == "auto":
            return value
        if not isinstance(value, (str, Path)):
            raise ValueError("must be auto, a head folder, or null")
        path = resolve_path(value, info)
        if not (path / "head.json").is_file():
            raise ValueError(f"no head.json in {path} (expected a runs/<run>/heads/<name> "
                             f"folder)")
        return path

    def unfreeze_problem(self, output_layer: str) -> str | None:
        """Why ``unfreeze`` cannot work on a base cut at ``output_layer``, or None."""
        present = vgg16.layers_up_to(output_layer)
        layers = self.unfrozen_layers()
        if not layers:
            return f"unfreeze {self.unfreeze} selects no convolution layer"
        beyond = [name for name in layers if name not in present]
        if beyond:
            return (f"unfreeze names {', '.join(beyond)}, but the base ends at {output_layer} "
                    f"(backbone.output_layer)")
        return None

    def unfrozen_layers(self) -> list[str]:
        """Base layer names phase 2 trains, in model order (pooling layers have no weights)."""
        if isinstance(self.unfreeze, int):
            return [n for n in vgg16.LAYERS[self.unfreeze:] if "_conv" in n]
        wanted = set(self.unfreeze)
        return [n for n in vgg16.conv_layer_names() if n in wanted or n[:6] in wanted]


class ScratchConfig(Section):
    """The from-scratch CNN baseline: rescale 1/255, conv + max-pool blocks, two dense layers."""

    filters: list[Int] = Field(default_factory=lambda: [16, 32, 64], min_length=1, max_length=6)
    """Filters of each conv + max-pool block (1 to 6 blocks)."""
    units: Int = Field(128, ge=1, le=65_536)
    """Units of the hidden dense layer."""
    augmentation: AugmentConfig = Field(default_factory=_no_augmentation)
    """Random transforms of the training images (all off by default)."""
    epochs: Int = Field(5, ge=1, le=100_000)
    """Most epochs."""
    batch_size: Int = Field(32, ge=1, le=4096)
    """Images per gradient step."""
    optimizer: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]
    """Keras optimizer."""
    learning_rate: Float = Field(1e-3, gt=0, le=10)
    """The optimizer's learning rate."""
    patience: Optional[Int] = Field(5, ge=0)
    """Early stopping on validation accuracy; null: off."""
    restore_best: Bool = True
    """With early stopping, end with the best validation epoch's weights."""
    seed: Int = 0
    """Seed of the weights, the augmentation and the batch order."""

    @model_validator(mode="after")
    def _positive_filters(self) -> ScratchConfig:
        if any(f < 1 for f in self.filters):
            raise ValueError("filters must be positive")
        return self


class AugmentedCopiesConfig(Section):
    """``stages.extract.augmented_copies``: K augmented copies of each training image, cached.

    Each copy is seeded by the image's content and its copy number, so the same image always
    gets the same K copies, and the cache key includes the transforms: change them and new
    copies are extracted, the old ones stay cached.
    """

    count: Int = Field(0, ge=0, le=1000)
    """Augmented copies cached per training image (0: none)."""
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    """The copies' transforms (keys as ``stages.finetune.augmentation``); part of each copy's
    cache key."""
    seed: Int = 0
    """Part of every copy's seed and cache key."""

    @model_validator(mode="after")
    def _transforms_on(self) -> AugmentedCopiesConfig:
        if self.count and not self.augmentation.enabled:
            raise ValueError("augmented copies need at least one transform on in "
                             "augmentation (K copies of the unchanged image would add nothing)")
        return self
