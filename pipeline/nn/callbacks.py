"""The Keras callbacks every training of the pipeline shares (dense heads, finetune, scratch)."""

from __future__ import annotations

from .runtime import keras


def early_stopping(patience: int | None, restore_best: bool) -> list:
    """``[EarlyStopping]`` on validation accuracy, or ``[]`` when ``patience`` is None.

    Training stops once validation accuracy has not risen for ``patience`` epochs; with
    ``restore_best`` the model ends with the weights of its best epoch (the first of equals),
    whether or not it stopped early. The fit must have validation data.
    """
    if patience is None:
        return []
    return [keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                          restore_best_weights=restore_best)]
