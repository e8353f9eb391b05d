"""scikit-learn's handwritten 8×8 digits."""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import DataNotFound
from .base import DIGIT_CLASSES, Dataset, register_dataset


@register_dataset("digits")
def digits() -> Dataset:
    """scikit-learn's 1,797 handwritten 8×8 digits (values 0..16 scaled to [0, 1]); no official test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataNotFound("the digits data set needs scikit-learn: pip install 'copycatch[datasets]'") from None
    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", x, y, 10, DIGIT_CLASSES, source="sklearn.datasets.load_digits")
