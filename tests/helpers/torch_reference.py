"""Exports PyTorch reference checkpoints and logits for ``tests/models/pretrained_test.py``.

Runs under a separate Python 3.11 venv with torch, safetensors and numpy (no torchvision, no JAX):

    .torch-venv/bin/python tests/helpers/torch_reference.py OUTDIR

The ResNet-18/34/50/101/152 (v1.5: the stride sits on the 3x3 conv of a Bottleneck) and VGG-19
modules below are written from the papers and reproduce torchvision's module layout, so their
``state_dict()`` keys and shapes are torchvision's (``conv1.weight``,
``layer2.0.downsample.0.weight``, ``features.34.bias``, ``classifier.6.weight``, ...). Weights and
BatchNorm running statistics are random, so eval-mode BatchNorm is really exercised.

Writes into OUTDIR:
  inputs.npy                  float32 [2, 224, 224, 3], NHWC (torch gets its NCHW transpose)
  {arch}.safetensors          the float32 state dict (1000 classes)
  {arch}_logits.npy           eval-mode logits [2, 1000]
  {arch}_features.npy         NHWC output of the last conv stage (ResNet layer4; VGG features[:-1])
  resnet18.pth                resnet18's state dict as {'state_dict': {'module.' + key: ...}}
  dtypes.safetensors, dtypes.npz   tensors of several dtypes, written by the safetensors package
  manifest.json               the architectures, torch's version and this script's SHA-256
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
from safetensors.torch import save_file
import torch
from torch import nn

NUM_CLASSES = 1000
IMAGE_SHAPE = (2, 224, 224, 3)


class BasicBlock(nn.Module):
  """Two 3x3 convs (the first strided) with BatchNorm, plus the (projected) input."""

  expansion = 1

  def __init__(self, in_channels: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _projection(in_channels, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided: ResNet v1.5), 1x1 expand x4, plus the (projected) input."""

  expansion = 4

  def __init__(self, in_channels: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _projection(in_channels, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
  """1x1 strided conv + BN when the block changes the shape (keys downsample.0 / downsample.1)."""
  if stride == 1 and in_channels == out_channels:
    return None
  return nn.Sequential(
    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
  )


class ResNet(nn.Module):
  """Stem (7x7/2 conv, BN, ReLU, 3x3/2 maxpool), four stages, global average pool, ``fc``."""

  def __init__(self, block: type[nn.Module], stage_sizes: tuple[int, ...]):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    in_channels = 64
    for stage, (num_blocks, planes) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
      blocks = []
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(block(in_channels, planes, stride))
        in_channels = planes * block.expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(in_channels, NUM_CLASSES)

  def features(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class VGG19(nn.Module):
  """``features`` (16 conv3x3+ReLU, 5 maxpools), ``avgpool`` (7x7), ``classifier`` (3 Linear)."""

  def __init__(self):
    super().__init__()
    layers: list[nn.Module] = []
    in_channels = 3
    for block in ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4):
      for channels in block:
        layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        in_channels = channels
      layers.append(nn.MaxPool2d(2, stride=2))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(512 * 7 * 7, 4096),
      nn.ReLU(inplace=True),
      nn.Dropout(0.5),
      nn.Linear(4096, 4096),
      nn.ReLU(inplace=True),
      nn.Dropout(0.5),
      nn.Linear(4096, NUM_CLASSES),
    )

  def last_conv_block(self, x: torch.Tensor) -> torch.Tensor:
    """The features without their final maxpool (what our VGG backbone returns)."""
    return self.features[:-1](x)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


ARCHITECTURES = {
  'resnet18': lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
  'resnet34': lambda: ResNet(BasicBlock, (3, 4, 6, 3)),
  'resnet50': lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
  'resnet101': lambda: ResNet(Bottleneck, (3, 4, 23, 3)),
  'resnet152': lambda: ResNet(Bottleneck, (3, 8, 36, 3)),
  'vgg19': VGG19,
}


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
      if isinstance(module, (BasicBlock, Bottleneck)):
        last_bn = module.bn2 if isinstance(module, BasicBlock) else module.bn3
        last_bn.weight.uniform_(0.1, 0.3)


def export(name: str, images_nchw: torch.Tensor, out_dir: pathlib.Path) -> None:
  torch.manual_seed(sorted(ARCHITECTURES).index(name))
  model = ARCHITECTURES[name]()
  randomize(model)
  model.eval()
  with torch.no_grad():
    logits = model(images_nchw)
    last_stage = model.last_conv_block if name == 'vgg19' else model.features
    features = last_stage(images_nchw)
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
  images = np.random.default_rng(0).normal(size=IMAGE_SHAPE).astype(np.float32)
  np.save(out_dir / 'inputs.npy', images)
  images_nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  for name in ARCHITECTURES:
    export(name, images_nchw, out_dir)
  export_dtypes(out_dir)
  manifest = {
    'architectures': list(ARCHITECTURES),
    'torch': torch.__version__,
    'script_sha256': hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest(),
  }
  (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=2))


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(f'usage: {sys.argv[0]} OUTDIR')
  main(pathlib.Path(sys.argv[1]))


# ------------------------------------------- DenseNet (tests/models/pretrained_densenet_test.py)
#
# torchvision's DenseNet layout, written from the paper (Huang et al. 2017, DenseNet-BC): keys
# ``features.conv0.weight``, ``features.denseblock1.denselayer1.norm1.weight``,
# ``features.transition1.conv.weight``, ``features.norm5.running_var``, ``classifier.weight``.
# ``main`` does not export these; pretrained_densenet_test.py calls ``export_densenet`` through
# ``-c``:
#
#     .torch-venv/bin/python -c 'import sys; sys.path.insert(0, "tests/helpers");
#         import torch_reference;
#         torch_reference.export_densenet("densenet121", 72, pathlib.Path(OUTDIR))'


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1 (bn_size * growth channels), BN-ReLU-conv3x3 (growth channels)."""

  def __init__(self, in_channels: int, growth_rate: int, bn_size: int):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(in_channels)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
    y = self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))
    return self.conv2(self.relu2(self.norm2(y)))


class DenseBlock(nn.ModuleDict):
  """``denselayer1 ... denselayerN``, each fed the concatenation of all earlier outputs."""

  def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int):
    super().__init__()
    for index in range(num_layers):
      layer = DenseLayer(in_channels + index * growth_rate, growth_rate, bn_size)
      self.add_module(f'denselayer{index + 1}', layer)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    outputs = [x]
    for layer in self.values():
      outputs.append(layer(outputs))
    return torch.cat(outputs, 1)


class Transition(nn.Sequential):
  """norm, relu, conv (1x1), pool (AvgPool2d 2x2/2)."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.add_module('norm', nn.BatchNorm2d(in_channels))
    self.add_module('relu', nn.ReLU(inplace=True))
    self.add_module('conv', nn.Conv2d(in_channels, out_channels, 1, bias=False))
    self.add_module('pool', nn.AvgPool2d(2, stride=2))


class DenseNet(nn.Module):
  """``features`` (stem, blocks, transitions, norm5), ReLU, global average pool, ``classifier``."""

  def __init__(
    self,
    block_sizes: tuple[int, ...],
    growth_rate: int = 32,
    num_init_features: int = 64,
    bn_size: int = 4,
  ):
    super().__init__()
    self.features = nn.Sequential()
    self.features.add_module(
      'conv0', nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)
    )
    self.features.add_module('norm0', nn.BatchNorm2d(num_init_features))
    self.features.add_module('relu0', nn.ReLU(inplace=True))
    self.features.add_module('pool0', nn.MaxPool2d(3, stride=2, padding=1))
    channels = num_init_features
    for block, num_layers in enumerate(block_sizes):
      self.features.add_module(
        f'denseblock{block + 1}', DenseBlock(num_layers, channels, growth_rate, bn_size)
      )
      channels += num_layers * growth_rate
      if block < len(block_sizes) - 1:
        self.features.add_module(f'transition{block + 1}', Transition(channels, channels // 2))
        channels //= 2
    self.features.add_module('norm5', nn.BatchNorm2d(channels))
    self.classifier = nn.Linear(channels, NUM_CLASSES)

  def last_stage(self, x: torch.Tensor) -> torch.Tensor:
    """ReLU(features(x)): the map our DenseNet backbone returns."""
    return torch.relu(self.features(x))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pooled = nn.functional.adaptive_avg_pool2d(self.last_stage(x), (1, 1))
    return self.classifier(torch.flatten(pooled, 1))


DENSENET_ARCHITECTURES = {
  'densenet121': lambda: DenseNet((6, 12, 24, 16)),
  'densenet161': lambda: DenseNet((6, 12, 36, 24), growth_rate=48, num_init_features=96),
  'densenet169': lambda: DenseNet((6, 12, 32, 32)),
  'densenet201': lambda: DenseNet((6, 12, 48, 32)),
}


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
  model.eval()


def export_densenet(name: str, image_size: int, out_dir: pathlib.Path) -> None:
  """Writes {name}.safetensors, {name}_inputs.npy (NHWC [2, S, S, 3]), {name}_logits.npy (eval
  mode) and {name}_features.npy (NHWC ReLU(norm5) map) into ``out_dir``."""
  out_dir.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(sorted(DENSENET_ARCHITECTURES).index(name))
  model = DENSENET_ARCHITECTURES[name]()
  randomize(model)
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, image_size, image_size, 3)).astype(np.float32)
  calibration = rng.normal(size=(8, image_size, image_size, 3)).astype(np.float32)
  calibrate_batch_norm(model, torch.from_numpy(calibration).permute(0, 3, 1, 2).contiguous())
  images_nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    logits = model(images_nchw)
    features = model.last_stage(images_nchw)
  state = {key: value.contiguous() for key, value in model.state_dict().items()}
  save_file(state, out_dir / f'{name}.safetensors')
  np.save(out_dir / f'{name}_inputs.npy', images)
  np.save(out_dir / f'{name}_logits.npy', logits.numpy())
  np.save(out_dir / f'{name}_features.npy', features.permute(0, 2, 3, 1).contiguous().numpy())
