"""PyTorch train steps for ``benchmarks/vs_pytorch.py``: official CARE, vectorised CARE, plain CE.

Runs under the torch venv (Python 3.11 with torch, torchvision, safetensors and numpy; no JAX),
driven by ``vs_pytorch.py``, which writes the batch (``image`` NHWC float32,
``label`` int32, ``mask`` [B, S, S] and ``has_mask``) to an ``.npz``::

    .torch-venv/bin/python benchmarks/torch_care_step.py --serve --data batch.npz --model resnet50
        # warms up, then times one step per request line on stdin ({"step": "official"})
    .torch-venv/bin/python benchmarks/torch_care_step.py --check --data batch.npz \\
        --model resnet18 --out DIR
        # float64: official vs vectorised losses and gradients; DIR gets the weights and the
        # vectorised step's gradients as torchvision-layout .safetensors

The three steps, all with Adam (lr 1e-4) on a ResNet in train mode (BatchNorm batch statistics):

* ``ce``: ``cross_entropy`` forward, backward, ``optimizer.step()``.
* ``official``: the official CARE code's stage-2 step (JiaxinZhuang/CARE, ``src/trainer.py``,
  ``src/loss.py``, ``src/model.py``): a tensor hook on the layer4 output, an extra
  ``backward(retain_graph=True)`` of the summed target logits through the whole network (which
  also leaves ``d(sum target logits)/d(theta)`` in every ``.grad``), then a Python loop over the
  boxed images: Grad-CAM weights = spatial mean of the hooked gradient, map = sum_k w_k A_k,
  min-max normalised, ``interpolate(..., 'bilinear')`` to the image size, and
  ``-min(sum(F * inner), tau) + sum(F * outer)`` with ``inner = M / sum(M)`` and
  ``outer = (1 - M) / sum(1 - M)`` (the code's mask files, ``src/aux/generate_mask.py``), summed
  over the boxed images; ``total = alpha * L_a + (1 - alpha) * CE``, ``total.backward()``,
  ``optimizer.step()``.
* ``vectorised``: the same loss for the whole batch at once, with the Grad-CAM gradient from
  ``torch.autograd.grad`` of the head only (no backbone backward, nothing leaks into ``.grad``).

The models are torchvision's own (``care_jax.models.load_pretrained`` reads their
``state_dict()``), the ResNets with a new head.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np
from safetensors.torch import save_file
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'helpers'))
from torchvision_import import torchvision  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = ('ce', 'official', 'vectorised')
RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
# ``features`` is the map Grad-CAM uses (ResNet: its ``layer4`` output), ``avgpool`` +
# ``classifier`` the head of these (ConvNeXt: LayerNorm2d + Linear; EfficientNet:
# Dropout + Linear).
TORCHVISION_MODELS = (
  'convnext_tiny',
  'convnext_small',
  'convnext_base',
  *(f'efficientnet_b{i}' for i in range(5)),
)
MODELS = RESNETS + TORCHVISION_MODELS
LEARNING_RATE = 1e-4


def build_model(name: str, *, num_classes: int, head: str) -> nn.Module:
  """torchvision's ResNet with ``fc`` replaced by the CARE head, or torchvision's own model.

  ``head='linear'``: global average pool + ``Linear`` (torchvision's ``fc``, care-jax's default);
  ``'bn_linear'``: global average pool + ``BatchNorm1d`` + ``Linear`` (the official code's).
  ConvNeXt and EfficientNet keep their own head (``head`` is ignored).
  """
  if name in TORCHVISION_MODELS:
    return getattr(torchvision.models, name)(num_classes=num_classes)
  model = getattr(torchvision.models, name)()
  width = model.fc.in_features
  linear = nn.Linear(width, num_classes)
  model.fc = nn.Sequential(nn.BatchNorm1d(width), linear) if head == 'bn_linear' else linear
  return model


def features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
  """The last feature map: torchvision's ``ResNet.forward`` up to ``layer4``, or ``features``."""
  if isinstance(model, torchvision.models.ResNet):
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))
  return model.features(images)


def head(model: nn.Module, feature_maps: torch.Tensor) -> torch.Tensor:
  """Logits from the last feature map: the official ``avgpool`` + ``classifier`` (ResNet's
  ``fc``; torchvision's ConvNeXt/EfficientNet ``avgpool`` + ``classifier``)."""
  if isinstance(model, torchvision.models.ResNet):
    return model.fc(feature_maps.mean((2, 3)))
  pooled = model.avgpool(feature_maps)
  if type(model).__name__ == 'ConvNeXt':  # its classifier starts with a LayerNorm2d
    return model.classifier(pooled)
  return model.classifier(torch.flatten(pooled, 1))


# ------------------------------------------------------------------------------------- steps


def official_grad_cam(feature: torch.Tensor, grad_val: torch.Tensor, size: int) -> torch.Tensor:
  """The official ``grad``: one image's [C, h, w] activations and gradient -> [size, size]."""
  channels, height, width = grad_val.size()
  weights = grad_val.view(channels, -1).mean(dim=1).view(channels, 1, 1)
  cam = (weights * feature).sum(dim=0)
  cam = cam - torch.min(cam)
  cam = cam / torch.max(cam)
  cam = F.interpolate(cam.view(1, 1, height, width), size=(size, size), mode='bilinear')
  return cam.view(size, size)


def official_grad_loss(
  cam: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, tau: float
) -> torch.Tensor:
  """The official ``GradLoss.grad_loss``: its Python branch caps the inner term at tau."""
  inner_loss = (cam * inner).sum()
  if inner_loss > tau:
    inner_loss = torch.tensor(tau, dtype=cam.dtype, device=cam.device)
  return -inner_loss + (cam * outer).sum()


def official_care_losses(model: nn.Module, batch: dict, *, alpha: float, tau: float):
  """Forward and backward of the official stage-2 step; leaves the gradients in ``.grad``."""
  gradients = []  # the official GradModel.extractor's hook on the layer4 output
  feature_maps = features(model, batch['images'])
  feature_maps.register_hook(gradients.append)
  outputs = head(model, feature_maps)
  ce = F.cross_entropy(outputs, batch['labels'])
  onehot = F.one_hot(batch['labels'], outputs.shape[1]).to(outputs.dtype)
  (onehot * outputs).sum().backward(retain_graph=True)
  grad_vals = gradients[-1]
  size = batch['images'].shape[-1]
  cam_losses = torch.tensor(0.0, dtype=outputs.dtype, device=outputs.device)
  for has_mask, feature, grad_val, inner, outer in zip(
    batch['has_mask'], feature_maps, grad_vals, batch['inner'], batch['outer']
  ):
    if has_mask:
      cam_losses += official_grad_loss(
        official_grad_cam(feature, grad_val, size), inner, outer, tau
      )
  total = alpha * cam_losses + (1 - alpha) * ce
  total.backward()
  return total, cam_losses


def vectorised_care_losses(model: nn.Module, batch: dict, *, alpha: float, tau: float):
  """The official loss for the whole batch at once; Grad-CAM by autograd.grad of the head."""
  images, labels = batch['images'], batch['labels']
  feature_maps = features(model, images)
  logits = head(model, feature_maps)
  ce = F.cross_entropy(logits, labels)
  # Only the head lies between the target logits and `feature_maps`: autograd runs just that part,
  # and create_graph=False keeps the channel weights constants, as Grad-CAM's.
  (grads,) = torch.autograd.grad(
    logits.gather(1, labels[:, None]).sum(), feature_maps, retain_graph=True
  )
  maps = (grads.mean((2, 3), keepdim=True) * feature_maps).sum(1)
  maps = maps - maps.amin((1, 2), keepdim=True)
  maps = maps / maps.amax((1, 2), keepdim=True)
  maps = F.interpolate(maps[:, None], size=images.shape[-2:], mode='bilinear')[:, 0]
  inner = torch.clamp((maps * batch['inner']).sum((1, 2)), max=tau)
  per_image = -inner + (maps * batch['outer']).sum((1, 2))
  cam_losses = torch.where(batch['has_mask'], per_image, torch.zeros_like(per_image)).sum()
  total = alpha * cam_losses + (1 - alpha) * ce
  total.backward()
  return total, cam_losses


def ce_losses(model: nn.Module, batch: dict, **_):
  loss = F.cross_entropy(model(batch['images']), batch['labels'])
  loss.backward()
  return loss, None


LOSSES = {'ce': ce_losses, 'official': official_care_losses, 'vectorised': vectorised_care_losses}


# -------------------------------------------------------------------------------------- data


def load_batch(path: str, *, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
  """The official code's inputs from the .npz: NCHW images, int64 labels, inner/outer masks."""
  arrays = np.load(path)
  mask = torch.from_numpy(arrays['mask']).to(dtype)
  outer = 1.0 - mask
  has_mask = torch.from_numpy(arrays['has_mask'].astype(bool))
  area = lambda m: torch.clamp(m.sum((1, 2), keepdim=True), min=1.0)
  batch = {
    'images': torch.from_numpy(arrays['image']).permute(0, 3, 1, 2).contiguous().to(dtype),
    'labels': torch.from_numpy(arrays['label']).long(),
    'has_mask': has_mask,
    'inner': torch.where(has_mask[:, None, None], mask / area(mask), 0.0),
    'outer': torch.where(has_mask[:, None, None], outer / area(outer), 0.0),
  }
  return {name: value.to(device) for name, value in batch.items()}


# ------------------------------------------------------------------------------------- modes


def serve(args) -> None:
  """Warm up each step, print ``{"ready": ...}``, then answer ``{"step": name}`` lines.

  Each step has its own model and Adam state (same initial weights) and keeps training on the
  one batch. A reply is ``{"seconds": s}``, timed here up to the end of ``optimizer.step()``
  (and a CUDA synchronisation). bfloat16 runs the losses under ``torch.autocast``, parameters
  float32, as care-jax's ``--dtype bfloat16``.
  """
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  batch = load_batch(args.data, dtype=torch.float32, device=args.device)
  num_classes = args.num_classes
  models = {}
  for name in STEPS:
    model = build_model(args.model, num_classes=num_classes, head=args.head).to(args.device)
    if models:
      model.load_state_dict(next(iter(models.values()))[0].state_dict())
    models[name] = (model.train(), torch.optim.Adam(model.parameters(), lr=LEARNING_RATE))
  autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16')

  def run(name: str) -> float:
    model, optimizer = models[name]
    start = time.perf_counter()
    optimizer.zero_grad()
    with autocast:
      LOSSES[name](model, batch, alpha=args.alpha, tau=args.tau)
    optimizer.step()
    if args.device == 'cuda':
      torch.cuda.synchronize()
    return time.perf_counter() - start

  for name in STEPS:
    for _ in range(args.warmup):
      run(name)
  print(
    json.dumps(
      {
        'ready': True,
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'device': args.device,
      }
    ),
    flush=True,
  )
  for line in sys.stdin:
    print(json.dumps({'seconds': run(json.loads(line)['step'])}), flush=True)


def check(args) -> dict:
  """Official vs vectorised step in float64 on the batch: losses and parameter gradients.

  The official gradients must equal the vectorised ones plus ``d(sum target logits)/d(theta)``,
  the leak of its extra backward pass. With ``--out``, writes ``weights.safetensors`` (the
  initial float64 state dict) and ``grads.safetensors`` (the vectorised step's gradients, with
  the BatchNorm buffers so that it reads as a checkpoint) there.
  """
  torch.manual_seed(args.seed)
  model = build_model(args.model, num_classes=args.num_classes, head=args.head).double().train()
  initial = {k: v.clone() for k, v in model.state_dict().items()}
  batch = load_batch(args.data, dtype=torch.float64, device='cpu')

  def grads_after(losses_fn):
    model.load_state_dict(initial)  # each pass updates the BatchNorm running statistics
    model.zero_grad()
    torch.manual_seed(args.seed)  # the same dropout / stochastic-depth masks in every pass
    total, care = losses_fn(model, batch, alpha=args.alpha, tau=args.tau)
    return total.item(), care.item(), {k: p.grad.clone() for k, p in model.named_parameters()}

  official_total, official_care, official_grads = grads_after(official_care_losses)
  vector_total, vector_care, vector_grads = grads_after(vectorised_care_losses)
  model.load_state_dict(initial)
  model.zero_grad()
  torch.manual_seed(args.seed)
  logits = model(batch['images'])
  ce = F.cross_entropy(logits, batch['labels']).item()
  logits.gather(1, batch['labels'][:, None]).sum().backward()
  leak = {k: p.grad.clone() for k, p in model.named_parameters()}
  scale = max(g.abs().max().item() for g in official_grads.values())
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in initial.items()}, out / 'weights.safetensors')
    save_file(
      {**{k: v.contiguous() for k, v in initial.items()}, **vector_grads}, out / 'grads.safetensors'
    )
  return {
    'torch': torch.__version__,
    'ce_loss': ce,
    'official_care_loss': official_care,
    'vectorised_care_loss': vector_care,
    'official_total_loss': official_total,
    'vectorised_total_loss': vector_total,
    'boxed': int(batch['has_mask'].sum()),
    'max_grad_diff_without_leak': max(
      (official_grads[k] - vector_grads[k]).abs().max().item() for k in leak
    )
    / scale,
    'max_grad_diff_with_leak': max(
      (official_grads[k] - vector_grads[k] - leak[k]).abs().max().item() for k in leak
    )
    / scale,
  }


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--data', required=True, help='.npz with image (NHWC), label, mask and has_mask'
  )
  parser.add_argument('--model', default='resnet50', choices=MODELS)
  parser.add_argument('--head', default='linear', choices=('linear', 'bn_linear'))
  parser.add_argument('--num-classes', type=int, default=7)
  parser.add_argument('--alpha', type=float, default=0.5)
  parser.add_argument('--tau', type=float, default=0.5)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps of each kind')
  parser.add_argument('--threads', type=int, default=torch.get_num_threads())
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', help='--check: where to write the weights and gradients')
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument('--serve', action='store_true', help='answer step requests on stdin')
  mode.add_argument(
    '--check',
    action='store_true',
    help='compare the official and vectorised losses and gradients (float64)',
  )
  args = parser.parse_args(argv)
  if args.serve:
    serve(args)
  else:
    print(json.dumps(check(args)))


if __name__ == '__main__':
  main()
