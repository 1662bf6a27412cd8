"""Exports torchvision's own ResNets, VGG-19 and DenseNet-121 for tests/models/pretrained_test.py
and pretrained_densenet_test.py: random weights, eval-mode logits and last-stage features.

Runs under the torch venv (tests/helpers/torch_venv.py: torch, torchvision, safetensors, numpy;
no JAX):

    .torch-venv/bin/python tests/helpers/torch_reference.py OUTDIR

The models are torchvision's (``torchvision.models.resnet18(weights=None)``, ``vgg19``,
``densenet121``; imported through tests/helpers/torchvision_import.py), built without downloads.
Weights and BatchNorm affine parameters and running statistics are random (DenseNet's running
statistics measured on random images, then perturbed), so eval-mode BatchNorm is really
exercised. The feature map our backbone returns is taken by a forward hook in the same forward
pass as the logits: ResNet's ``layer4``; VGG's ``features[-2]`` (the last ReLU, before the final
max pool); DenseNet's ``features`` (``norm5``) with the ReLU that torchvision's forward applies.

Writes into OUTDIR:
  inputs.npy                  float32 [2, 224, 224, 3], NHWC (torch gets its NCHW transpose)
  densenet121_inputs.npy      float32 [2, 72, 72, 3]: DenseNet-121 is compared at 72 px
  {arch}.safetensors          the float32 state dict (1000 classes)
  {arch}_logits.npy           eval-mode logits [2, 1000]
  {arch}_features.npy         NHWC feature map of the last stage (above)
  resnet18.pth                resnet18's state dict as {'state_dict': {'module.' + key: ...}}
  dtypes.safetensors, dtypes.npz   tensors of several dtypes, written by the safetensors package
  manifest.json               the architectures, torch's and torchvision's versions, this
                              script's SHA-256
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
from safetensors.torch import save_file
import torch
from torch import nn
from torchvision_import import torchvision

models = torchvision.models
# name -> (torchvision's builder, the module whose output is our backbone's feature map).
ARCHITECTURES = {
  'resnet18': (models.resnet18, lambda model: model.layer4),
  'resnet34': (models.resnet34, lambda model: model.layer4),
  'resnet50': (models.resnet50, lambda model: model.layer4),
  'resnet101': (models.resnet101, lambda model: model.layer4),
  'resnet152': (models.resnet152, lambda model: model.layer4),
  'vgg19': (models.vgg19, lambda model: model.features[-2]),
  'densenet121': (models.densenet121, lambda model: model.features),
}
IMAGE_SIZE = 224
# DenseNet-121 at a small size (CI time): an odd 9x9 map before transition 3, 2x2 features.
DENSENET_SIZE = 72


def randomize(model: nn.Module) -> None:
  """He-normal (fan_out) convs, small random biases and BatchNorm affine/running statistics.

  Random running statistics (not the fresh 0/1) make eval-mode BatchNorm a real test of the
  mean/var mapping.
  """
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        if module.bias is not None:
          module.bias.normal_(0.0, 0.1)
      elif isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.fill_(1000)
      elif isinstance(module, nn.Linear):
        module.bias.normal_(0.0, 0.1)
    # A small last BN scale per residual branch, as trained ResNets have: otherwise each block
    # doubles the variance and ResNet-152's logits reach 1e8.
    for module in model.modules():
      if isinstance(module, models.resnet.BasicBlock):
        module.bn2.weight.uniform_(0.1, 0.3)
      elif isinstance(module, models.resnet.Bottleneck):
        module.bn3.weight.uniform_(0.1, 0.3)


def calibrate_batch_norm(model: nn.Module, images: torch.Tensor) -> None:
  """Running statistics of one train-mode pass over ``images``, then perturbed.

  DenseNet has no residual sums to keep activations in scale: with random running statistics
  every dense layer multiplies the scale of its output, and 58 layers overflow float32. Measured
  statistics (as a trained model has) keep eval-mode activations near unit scale; the random
  perturbation keeps them different from the batch statistics of the test images.
  """
  batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
  for module in batch_norms:
    module.reset_running_stats()
    module.momentum = None  # a cumulative average: after one batch, that batch's statistics
  model.train()
  with torch.no_grad():
    model(images)
    for module in batch_norms:
      module.running_mean.add_(torch.randn_like(module.running_mean) * 0.1)
      module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.8, 1.25))
      module.num_batches_tracked.fill_(1000)
      module.momentum = 0.1


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def export(name: str, images: np.ndarray, out_dir: pathlib.Path) -> None:
  torch.manual_seed(sorted(ARCHITECTURES).index(name))
  build, last_stage = ARCHITECTURES[name]
  model = build(weights=None)
  randomize(model)
  if name.startswith('densenet'):
    calibration = np.random.default_rng(2).normal(size=(8, *images.shape[1:]))
    calibrate_batch_norm(model, nchw(calibration.astype(np.float32)))
  model.eval()
  captured = []
  # A copy: the layers after it may work in place (DenseNet's forward: F.relu(..., inplace=True)).
  last_stage(model).register_forward_hook(lambda module, inputs, out: captured.append(out.clone()))
  with torch.no_grad():
    logits = model(nchw(images))
  (features,) = captured
  if name.startswith('densenet'):
    features = torch.relu(features)
  state = {key: value.contiguous() for key, value in model.state_dict().items()}
  save_file(state, out_dir / f'{name}.safetensors')
  np.save(out_dir / f'{name}_logits.npy', logits.numpy())
  np.save(out_dir / f'{name}_features.npy', features.permute(0, 2, 3, 1).contiguous().numpy())
  if name == 'resnet18':
    # A DataParallel model saved inside a training checkpoint.
    wrapped = {'state_dict': {f'module.{key}': value for key, value in state.items()}}
    torch.save(wrapped, out_dir / 'resnet18.pth')


def export_dtypes(out_dir: pathlib.Path) -> None:
  """Tensors of each dtype the reader supports, and their exact values (float64/int64) in an npz."""
  values = torch.linspace(-3.0, 3.0, 24, dtype=torch.float64).reshape(2, 3, 4)
  tensors = {
    'f64': values,
    'f32': values.float(),
    'f16': values.half(),
    'bf16': values.bfloat16(),
    'i64': torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
    'scalar_f32': torch.tensor(1.5, dtype=torch.float32),
  }
  save_file(tensors, out_dir / 'dtypes.safetensors')
  np.savez(
    out_dir / 'dtypes.npz',
    **{k: (v.double() if v.is_floating_point() else v).numpy() for k, v in tensors.items()},
  )


def main(out_dir: pathlib.Path) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  images = np.random.default_rng(0).normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  np.save(out_dir / 'inputs.npy', images)
  small = np.random.default_rng(1).normal(size=(2, DENSENET_SIZE, DENSENET_SIZE, 3))
  small = small.astype(np.float32)
  np.save(out_dir / 'densenet121_inputs.npy', small)
  for name in ARCHITECTURES:
    export(name, small if name.startswith('densenet') else images, out_dir)
  export_dtypes(out_dir)
  manifest = {
    'architectures': list(ARCHITECTURES),
    'torch': torch.__version__,
    'torchvision': torchvision.__version__,
    'script_sha256': hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest(),
  }
  (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=2))


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(f'usage: {sys.argv[0]} OUTDIR')
  main(pathlib.Path(sys.argv[1]))
