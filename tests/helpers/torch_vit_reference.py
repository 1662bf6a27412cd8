"""Exports torchvision's ViT-B/16 and timm's ViT-B/16 and DeiT-S/16: random weights, eval logits.

Runs under the torch venv (tests/helpers/torch_venv.py), as torch_convnet_reference.py does, whose
op declarations (torchvision's ``nms``/``qnms``) and randomisation it imports:

    .torch-venv/bin/python tests/helpers/torch_vit_reference.py OUTDIR [NAME ...]

NAME: ``vit_b_16`` or ``deit_s_16`` (default: both; the tests export DeiT-S alone for CI).

The models are the libraries' own (``torchvision.models.vit_b_16``,
``timm.create_model('vit_base_patch16_224')``, ``timm.create_model('deit_small_patch16_224')``),
built without downloads. Every float tensor is randomised as the ConvNets' are (LayerNorm affine,
biases), the weight matrices and the patch kernel are normal with variance 1 / fan-in, and the
tensors the libraries start at zero (torchvision's class token, attention ``in_proj_bias``) get
small normal values, so that each one counts; all are rounded to float16, the models run in
float32 on those values.

Writes into OUTDIR:
  input_{size}.npy               float32 [2, size, size, 3] NHWC (torch gets the NCHW transpose)
  {name}.{source}.safetensors    the float16 state dict (224 px, 1000 classes)
  {name}.{source}_{size}.npy     eval-mode logits [2, 1000]: 224 px; DeiT-S also at 64 px, its
                                 position embedding resampled by timm (``dynamic_img_size``)
  {name}.{source}.pos_embed_{grid}.npy   timm's ``resample_abs_pos_embed`` of the checkpoint's
                                 embedding to a grid x grid patch grid (4: 64 px, 24: 384 px)
  manifest.json                  parameter counts, versions, sizes
"""

import json
import pathlib
import sys

import numpy as np
from safetensors.torch import save_file
import torch
import torch_convnet_reference as convnet  # declares torchvision's ops, imports timm, torchvision

timm = convnet.timm
torchvision = convnet.torchvision

# Our name -> {source: the library's model name}.
MODELS = {
  'vit_b_16': {'torchvision': 'vit_b_16', 'timm': 'vit_base_patch16_224'},
  'deit_s_16': {'timm': 'deit_small_patch16_224'},
}
# The sizes of each (name, source)'s logits; 64 px runs timm's model with dynamic_img_size.
SIZES = {('vit_b_16', 'torchvision'): (224,), ('vit_b_16', 'timm'): (224,)}
SIZES[('deit_s_16', 'timm')] = (224, 64)
RESAMPLED_GRIDS = (4, 24)


def _build(library_name: str, source: str, **kwargs) -> torch.nn.Module:
  if source == 'torchvision':
    return getattr(torchvision.models, library_name)(weights=None)
  return timm.create_model(library_name, pretrained=False, **kwargs)


@torch.no_grad()
def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
  convnet._randomise(model, generator)
  for key, tensor in model.state_dict().items():
    if not tensor.is_floating_point():
      continue
    if tensor.ndim >= 2 and key.endswith('weight'):
      # Unit-variance outputs (the libraries' std 0.02 leaves GELU and softmax nearly linear,
      # where an approximate GELU or a wrong attention scale would go unnoticed).
      value = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
    elif not tensor.any():
      value = torch.randn(tensor.shape, generator=generator) * 0.02
    else:
      continue
    tensor.copy_(value.to(torch.float16).to(torch.float32))


def _export(out_dir, name, source, generator, inputs) -> int:
  """Writes one model's state dict, logits and resampled embeddings; its parameter count."""
  library_name = MODELS[name][source]
  model = _build(library_name, source).eval()
  _randomise(model, generator)
  state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
  save_file(state, str(out_dir / f'{name}.{source}.safetensors'))
  for size in SIZES[name, source]:
    runner = model
    if size != 224:  # timm resamples the 14 x 14 position embedding to the input's grid
      runner = _build(library_name, source, dynamic_img_size=True).eval()
      runner.load_state_dict(model.state_dict())
    with torch.no_grad():
      np.save(out_dir / f'{name}.{source}_{size}.npy', runner(inputs[size]).numpy())
  if source == 'timm':
    for grid in RESAMPLED_GRIDS:
      resampled = timm.layers.resample_abs_pos_embed(model.pos_embed, (grid, grid))
      np.save(out_dir / f'{name}.{source}.pos_embed_{grid}.npy', resampled.detach().numpy())
  return sum(p.numel() for p in model.parameters())


def main(out_dir: pathlib.Path, names: tuple[str, ...]) -> None:
  out_dir.mkdir(parents=True)
  torch.manual_seed(0)
  pairs = [(name, source) for name in names for source in MODELS[name]]
  inputs = {}
  for size in sorted({size for pair in pairs for size in SIZES[pair]}):
    images = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
    np.save(out_dir / f'input_{size}.npy', images)
    inputs[size] = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  counts = {}
  for name, source in pairs:  # each model's own seed: the same weights whichever others run
    generator = torch.Generator().manual_seed(list(SIZES).index((name, source)))
    counts[f'{name}.{source}'] = _export(out_dir, name, source, generator, inputs)
  manifest = {
    'parameter_counts': counts,
    'sizes': {f'{name}.{source}': list(SIZES[name, source]) for name, source in pairs},
    'resampled_grids': list(RESAMPLED_GRIDS),
    'torch': torch.__version__,
    'torchvision': torchvision.__version__,
    'timm': timm.__version__,
  }
  (out_dir / 'manifest.json').write_text(json.dumps(manifest, indent=2))


if __name__ == '__main__':
  if len(sys.argv) < 2 or not set(sys.argv[2:]) <= set(MODELS):
    sys.exit(f'usage: {sys.argv[0]} OUTDIR [{" ".join(MODELS)}] (default: all)')
  main(pathlib.Path(sys.argv[1]), tuple(sys.argv[2:]) or tuple(MODELS))
