"""torchvision, importable beside the torch venv's CPU torch (``from torchvision_import import
torchvision``), for the scripts run by path under that venv (tests/helpers/torch_venv.py).

torchvision 0.28's C++ ops do not load beside the CPU ``torch==2.13.0`` wheel, and its Python
import registers fake kernels for two of them unguarded: ``torchvision::nms`` and
``torchvision::qnms`` are declared with ``torch.library.define`` first (once: Python imports a
module once). Its pure-Python models (ResNet, VGG, DenseNet, ConvNeXt, EfficientNet, ViT) then run.
Not importable in the JAX environment (no torch there).
"""

import torch

for _op in ('torchvision::nms', 'torchvision::qnms'):
  torch.library.define(_op, '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')

import torchvision  # noqa: E402 - after the op declarations

__all__ = ['torchvision']
