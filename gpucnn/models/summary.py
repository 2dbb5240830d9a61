"""``model.summary()``: the Keras table of layers, output shapes and parameter counts."""
from __future__ import annotations

from gpucnn.layers.base import fmt_shape


def _cells(fields, positions):
    line, start = "", 0
    for i, (text, end) in enumerate(zip(fields, positions)):
        cell = (" " if i == 0 else "") + str(text)
        width = end - start
        line += cell.ljust(width) if len(cell) < width else cell + " "
        start = len(line) if len(line) > end else end
    return line.rstrip()


def summary_lines(model, line_length=None, positions=None) -> list:
    line_length = line_length or 65
    positions = positions or [0.45, 0.85, 1.0]
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]
    lines = [f'Model: "{model.name}"', "_" * line_length,
             _cells(["Layer (type)", "Output Shape", "Param #"], positions), "=" * line_length]
    rows = model.layers
    shown = set()
    for layer in rows:
        shape = layer.output_shape
        shape = "?" if shape is None else fmt_shape(shape)
        params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
        if id(layer) in shown:              # a layer used again: its weights are counted once
            params = "0 (shared)"
        shown.add(id(layer))
        lines.append(_cells([f"{layer.name} ({type(layer).__name__})", shape, params], positions))
    trainable = sum(t.size for t in model.trainable_weights)
    frozen = sum(t.size for t in model.non_trainable_weights)
    lines += ["=" * line_length,
              f"Total params: {trainable + frozen:,}",
              f"Trainable params: {trainable:,}",
              f"Non-trainable params: {frozen:,}",
              "_" * line_length]
    return lines
