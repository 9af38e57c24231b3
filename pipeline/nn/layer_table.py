"""The layer table of a Keras model: shapes, parameters, trainable or frozen, and totals.

What ``pipeline info backbone`` prints and what the finetune stage writes before each phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from .runtime import keras


@dataclass(frozen=True)
class LayerRow:
    """One line of the layer table."""

    index: int
    name: str
    input_shape: str
    output_shape: str
    params: int
    trainable: bool


def _shape(tensor_or_list) -> str:
    if isinstance(tensor_or_list, (list, tuple)) and tensor_or_list and \
            not isinstance(tensor_or_list[0], (int, type(None))):
        return ", ".join(_shape(t) for t in tensor_or_list)
    shape = getattr(tensor_or_list, "shape", tensor_or_list)
    return str(tuple(shape))


def layer_table(model: keras.Model) -> list[LayerRow]:
    """Every layer of ``model`` (nested models expanded) with shapes, parameters and status."""
    rows: list[LayerRow] = []

    def walk(m, parent_trainable: bool):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer, parent_trainable and layer.trainable)
                continue
            params = layer.count_params() if layer.built else 0
            is_input = isinstance(layer, keras.layers.InputLayer)
            rows.append(LayerRow(index=len(rows), name=layer.name,
                                 input_shape="-" if is_input else _shape(layer.input),
                                 output_shape=_shape(layer.output), params=params,
                                 trainable=parent_trainable and layer.trainable and params > 0))
    walk(model, model.trainable)
    return rows


def format_layer_table(rows: list[LayerRow]) -> str:
    """The layer table as aligned text with totals (trainable, frozen, all parameters)."""
    header = f"{'#':>3}  {'layer':<18} {'input shape':<22} {'output shape':<22} " \
             f"{'params':>11}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        status = "trainable" if r.trainable else ("frozen" if r.params else "-")
        lines.append(f"{r.index:>3}  {r.name:<18} {r.input_shape:<22} {r.output_shape:<22} "
                     f"{r.params:>11,}  {status}")
    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    lines += ["-" * len(header),
              f"total parameters:     {total:>12,}",
              f"trainable parameters: {trainable:>12,}",
              f"frozen parameters:    {total - trainable:>12,}"]
    return "\n".join(lines)
