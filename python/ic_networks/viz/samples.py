"""Fashion-MNIST test images 0-9, shipped with the package (``data/fashion_mnist_t10k_0-9.npz``,
4 KB; the copyright notice is ``data/LICENSE.fashion-mnist``), so that ``ic-networks gradcam`` has an
input without the dataset installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLES", "bundled_fmnist_test_image"]

SAMPLES = Path(__file__).with_name("data") / "fashion_mnist_t10k_0-9.npz"


def bundled_fmnist_test_image(index: int) -> tuple[np.ndarray, int]:
    """``(image uint8 (28, 28), label)``: Fashion-MNIST test image ``index`` (0 to 9), the same bytes
    as in the dataset's ``t10k-images-idx3-ubyte``."""
    with np.load(SAMPLES, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    if not 0 <= index < len(images):
        raise ValueError(f"image: only Fashion-MNIST test images 0 to {len(images) - 1} are shipped, got {index}")
    return images[index].copy(), int(labels[index])
