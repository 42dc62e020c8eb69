"""adamlab's default CNN (`adamlab.models.CNN`, configs/digits.py) in PyTorch, for the
benchmarks that compare with PyTorch (`vs_pytorch.py`, `time_to_result.py`).

Imports torch alone (no jax, no TensorFlow): `time_to_result.py` trains it in a child process
that should pay for nothing but torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchCNN(torch.nn.Module):
    """models.CNN's layers in PyTorch: conv 3x3 'SAME' + ReLU + 2x2 max pool per block
    (while the image is at least 2x2), dense + ReLU, classifier."""

    def __init__(self, image_shape, features=(32, 64), dense=128, num_classes=10):
        super().__init__()
        height, width, channels = image_shape
        self.convs = torch.nn.ModuleList()
        self.pools = []
        for f in features:
            self.convs.append(torch.nn.Conv2d(channels, f, 3, padding=1))
            self.pools.append(min(height, width) >= 2)
            if self.pools[-1]:
                height, width = height // 2, width // 2
            channels = f
        self.dense = torch.nn.Linear(channels * height * width, dense)
        self.head = torch.nn.Linear(dense, num_classes)

    def forward(self, x):
        for conv, pool in zip(self.convs, self.pools, strict=True):
            x = F.relu(conv(x))
            x = F.max_pool2d(x, 2) if pool else x
        return self.head(F.relu(self.dense(x.flatten(1))))
