"""Identity labels, one per image, given as a sequence, a numpy array or a torch tensor: their plain values.

A torch tensor's elements are 0-d tensors, which hash by identity: as dict keys or set members no two of them are
one identity. Everything that groups or encodes labels takes them through `label_values` first."""

from __future__ import annotations

from typing import Any

__all__ = ["label_values", "plain_label"]


def plain_label(label: Any) -> Any:
    """A label as a plain value: a 0-d tensor or numpy scalar (`labels[i]`, `logits.argmax()`) -> `.item()`."""
    return label.item() if getattr(label, "ndim", None) == 0 and hasattr(label, "item") else label


def label_values(labels: Any) -> list:
    """`labels` (a sequence, a numpy array or a torch tensor on any device) as a list of plain values."""
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu()
    return [plain_label(v) for v in labels]
