"""Exports torchvision's and timm's ConvNeXt and EfficientNet: random weights, eval-mode logits.

Runs under the torch venv (tests/helpers/torch_venv.py: torch, torchvision, timm, safetensors):

    .torch-venv/bin/python tests/helpers/torch_convnet_reference.py OUTDIR

The models are the libraries' own (``torchvision.models.convnext_tiny``,
``timm.create_model('convnext_tiny')``, ...), built without downloads. torchvision's C++ ops do
not load beside this CPU torch, and its Python import registers two ops' fake kernels unguarded:
``torchvision::nms`` and ``torchvision::qnms`` are declared first
(tests/helpers/torchvision_import.py).
Every float tensor is randomised (LayerNorm/BatchNorm affine and running statistics, layer
scales near 1 instead of 1e-6, so every block counts) and rounded to float16, the dtype the
safetensors files store (half the disk); the models run in float32 on those values.

Writes into OUTDIR:
  input_{size}.npy               float32 [2, size, size, 3] NHWC (torch gets the NCHW transpose)
  {name}.{source}.safetensors    the float16 state dict (1000 classes)
  {name}.{source}_{size}.npy     eval-mode logits [2, 1000] at each size
  manifest.json                  parameter counts, versions, sizes
"""

import json
import pathlib
import sys

import numpy as np
from safetensors.torch import save_file
import torch
from torchvision_import import torchvision

# isort: split
import timm  # after torchvision's op declarations (torchvision_import)

SIZES = (64,)
# One variant of each family also at the default 224 px.
FULL_SIZE = {'convnext_tiny': 224, 'efficientnet_b0': 224}
NAMES = (
  'convnext_tiny',
  'convnext_small',
  'convnext_base',
  'efficientnet_b0',
  'efficientnet_b1',
  'efficientnet_b2',
  'efficientnet_b3',
  'efficientnet_b4',
)


def _build(name: str, source: str) -> torch.nn.Module:
  if source == 'torchvision':
    return getattr(torchvision.models, name)(weights=None)
  return timm.create_model(name, pretrained=False)


@torch.no_grad()
def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
  for key, tensor in model.state_dict().items():
    if not tensor.is_floating_point():
      continue
    leaf = key.rsplit('.', 1)[-1]
    if leaf in ('running_var',):
      value = torch.rand(tensor.shape, generator=generator) + 0.5
    elif leaf in ('gamma', 'layer_scale') or (leaf == 'weight' and tensor.ndim == 1):
      value = torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5
    elif leaf in ('bias', 'running_mean'):
      value = torch.randn(tensor.shape, generator=generator) * 0.1
    else:
      value = tensor
    tensor.copy_(value.to(torch.float16).to(torch.float32))


def main(out_dir: pathlib.Path) -> None:
  out_dir.mkdir(parents=True)
  torch.manual_seed(0)
  generator = torch.Generator().manual_seed(0)
  inputs = {}
  for size in {*SIZES, *FULL_SIZE.values()}:
    images = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
    np.save(out_dir / f'input_{size}.npy', images)
    inputs[size] = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  counts = {}
  for name in NAMES:
    for source in ('torchvision', 'timm'):
      model = _build(name, source).eval()
      _randomise(model, generator)
      counts[f'{name}.{source}'] = sum(p.numel() for p in model.parameters())
      state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
      state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
      save_file(state, str(out_dir / f'{name}.{source}.safetensors'))
      for size in (*SIZES, *([FULL_SIZE[name]] if name in FULL_SIZE else [])):
        with torch.no_grad():
          logits = model(inputs[size]).numpy()
        np.save(out_dir / f'{name}.{source}_{size}.npy', logits)
  manifest = {
    'parameter_counts': counts,
    'sizes': {name: [*SIZES, *([FULL_SIZE[name]] if name in FULL_SIZE else [])] for name in NAMES},
    'torch': torch.__version__,
    'torchvision': torchvision.__version__,
    'timm': timm.__version__,
  }
  (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=2))


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(f'usage: {sys.argv[0]} OUTDIR')
  main(pathlib.Path(sys.argv[1]))
