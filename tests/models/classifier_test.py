"""The classifier (backbone -> features -> head) of every model name: shapes, dtypes, batch
statistics, heads applied to features, axis_name, the attention maps of each head, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from care_jax import attention
from care_jax.models import ATTENTION_METHODS
from care_jax.models import MODEL_NAMES
from care_jax.models import BasicBlock
from care_jax.models import Bottleneck
from care_jax.models import Classifier
from care_jax.models import NormedLinearHead
from care_jax.models import get_model
from care_jax.models import resolve_head
from tests.helpers import model_fixtures as mf

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
DENSENETS = ('densenet121', 'densenet161', 'densenet169', 'densenet201')
CONVNEXTS = ('convnext_tiny', 'convnext_small', 'convnext_base')
EFFICIENTNETS = tuple(f'efficientnet_b{i}' for i in range(5))
VITS = ('vit_b_16', 'deit_s_16')
# Input size / feature map size, as documented by each backbone.
FEATURE_STRIDE = {
  'tiny_cnn': 8,
  'vgg19': 16,
  **{name: 32 for name in RESNETS + DENSENETS + CONVNEXTS + EFFICIENTNETS},
  **{name: 16 for name in VITS},
}


# The larger ConvNeXt/EfficientNet variants differ from T/B0 in depths and widths only, DeiT-S
# from ViT-B in widths (their parameter counts are checked in convnext_test.py,
# efficientnet_test.py, vit_test.py): not traced again here.
@pytest.mark.parametrize(
  'name', [n for n in MODEL_NAMES if n not in (*CONVNEXTS[1:], *EFFICIENTNETS[1:], *VITS[1:])]
)
def test_every_model_gives_float32_logits_and_documented_feature_size(name):
  model, variables = mf.abstract_model(name)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  side = 64 // FEATURE_STRIDE[name]

  (logits, inter), updates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': mf.KEY}),
    variables,
    images,
  )
  eval_logits, eval_inter = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, images
  )

  for out, features in ((logits, inter['features']), (eval_logits, eval_inter['features'])):
    assert out.shape == (2, 1000) and out.dtype == jnp.float32
    assert features.shape[:3] == (2, side, side)
  # Train mode returns new running statistics for every BatchNorm (VGG-19, ConvNeXt have none).
  assert jax.tree.structure(updates.get('batch_stats', {})) == jax.tree.structure(
    variables.get('batch_stats', {})
  )
  assert ('batch_stats' in variables) == (name not in ('vgg19', *CONVNEXTS, *VITS))


@pytest.mark.parametrize('name', ['tiny_cnn', 'basic_resnet', 'bottleneck_resnet'])
def test_train_mode_updates_every_batch_stat_and_eval_mode_none(name):
  model = {
    'tiny_cnn': get_model('tiny_cnn', num_classes=3, head='bn_linear'),
    'basic_resnet': mf.small_resnet(BasicBlock, head='bn_linear'),
    'bottleneck_resnet': mf.small_resnet(Bottleneck, head='bn_linear'),
  }[name]
  images = mf.images()
  variables = mf.fake_variables(model, images)

  # One compiled program each: op-by-op execution compiles every conv shape separately.
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']), static_argnames='train')
  (logits, _), updates = apply(variables, images, train=True)
  _, eval_updates = apply(variables, images, train=False)

  assert np.all(np.isfinite(logits))
  changed = jax.tree.map(
    lambda new, old: not np.allclose(new, old), updates['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, eval_updates['batch_stats'], variables['batch_stats'])


@pytest.mark.parametrize(
  'name, head',
  [
    ('tiny_cnn', 'linear'),
    ('tiny_cnn', 'bn_linear'),
    ('bottleneck_resnet', 'bn_linear'),
    ('small_vgg', 'vgg'),
  ],
)
def test_apply_head_on_features_reproduces_logits(name, head):
  if name == 'small_vgg':
    model = mf.small_vgg_classifier()
  elif name == 'bottleneck_resnet':
    model = mf.small_resnet(Bottleneck, head=head)
  else:
    model = get_model(name, num_classes=3, head=head)
  images = mf.images()
  variables = mf.fake_variables(model, images)

  logits, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  head_logits = model.apply(variables, inter['features'], train=False, method=Classifier.apply_head)

  assert head_logits.dtype == jnp.float32
  # Only rounding differs: the full forward pass is one compiled (fused) program.
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_bfloat16_keeps_float32_params_and_logits(name):
  model = get_model(name, num_classes=4, dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = mf.abstract_variables(model, images)
  (logits, inter), _ = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': mf.KEY}),
    variables,
    images,
  )
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert inter['features'].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32


def test_bfloat16_logits_are_close_to_float32():
  images = mf.images()
  f32 = get_model('tiny_cnn', num_classes=4)
  bf16 = get_model('tiny_cnn', num_classes=4, dtype=jnp.bfloat16)
  variables = mf.fake_variables(f32, images)
  expected, _ = jax.jit(functools.partial(f32.apply, train=False))(variables, images)
  logits, _ = jax.jit(functools.partial(bf16.apply, train=False))(variables, images)
  np.testing.assert_allclose(logits, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


def test_axis_name_averages_batch_statistics_across_the_mapped_axis():
  """Two shards under vmap(axis_name) give the single-device result on the whole batch."""
  images = mf.images(batch=4)
  shards = images.reshape(2, 2, *images.shape[1:])
  reference = get_model('tiny_cnn', num_classes=3, head='bn_linear')
  variables = mf.fake_variables(reference, images)
  (expected, _), expected_updates = jax.jit(
    lambda v, x: reference.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, images)

  def sharded(axis_name):
    model = get_model('tiny_cnn', num_classes=3, head='bn_linear', axis_name=axis_name)
    step = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
    return jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name='batch'))(variables, shards)

  (logits, _), updates = sharded('batch')
  np.testing.assert_allclose(logits.reshape(4, 3), expected, rtol=1e-4, atol=1e-4)
  jax.tree.map(
    lambda new, ref: np.testing.assert_allclose(new[0], ref, rtol=1e-4, atol=1e-5),
    updates,
    expected_updates,
  )
  # Without axis_name each shard normalises with its own statistics.
  (local_logits, _), _ = sharded(None)
  assert not np.allclose(local_logits.reshape(4, 3), expected, rtol=1e-4, atol=1e-4)


def test_runs_under_pmap_with_axis_name():
  model = get_model('tiny_cnn', num_classes=3, head='bn_linear', axis_name='batch')
  images = mf.images()
  variables = mf.fake_variables(model, images)
  step = jax.pmap(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']),
    axis_name='batch',
    in_axes=(None, 0),
  )
  (logits, inter), updates = step(variables, images[None])
  assert logits.shape == (1, 2, 3)
  assert inter['features'].shape == (1, 2, 8, 8, 128)
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


@functools.cache
def _attention_case(name: str, head: str) -> tuple[Classifier, dict, jax.Array, jax.Array]:
  """A small model, its (numpy-filled) variables, a feature map of 32x32 images and labels."""
  model = mf.small_vgg_classifier() if head == 'vgg' else get_model(name, num_classes=3, head=head)
  images = mf.images(size=32, seed=3)
  variables = mf.fake_variables(model, images, seed=4)
  _, inter = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  return model, variables, inter['features'], jnp.array([2, 0])


def _head_fn(model: Classifier, variables: dict):
  return lambda f: model.apply(variables, f, train=False, method=Classifier.apply_head)


def test_attention_methods_constant():
  assert ATTENTION_METHODS == ('auto', 'cam', 'grad_cam')


def test_attention_maps_of_a_linear_head_are_cam_with_its_kernel():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  expected = attention.cam(features, variables['params']['head']['fc']['kernel'], labels)
  for method in ('cam', 'auto'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == (2, 4, 4) and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)
  np.testing.assert_array_equal(model.attention_maps(variables, features, labels), expected)
  # Grad-CAM of a GAP + linear head is CAM up to a positive scale: the same normalised map.
  np.testing.assert_allclose(
    model.attention_maps(variables, features, labels, method='grad_cam'), expected, atol=1e-5
  )


@pytest.mark.parametrize(
  'name, head',
  [
    ('tiny_cnn', 'bn_linear'),
    ('small_vgg', 'vgg'),
    (mf.SMALL_CONVNEXT, 'layernorm_linear'),
    (mf.SMALL_EFFICIENTNET, 'dropout_linear'),
  ],
)
def test_attention_maps_of_other_heads_are_grad_cam_of_the_head(name, head):
  model, variables, features, labels = _attention_case(name, head)
  expected = attention.grad_cam(_head_fn(model, variables), features, labels)
  for method in ('auto', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == features.shape[:3] and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)


def _minmax(x):
  low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
  return (x - low) / (high - low)


def test_contrast_maps_of_a_linear_head_weigh_the_true_column_against_the_others():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  kernel = np.asarray(variables['params']['head']['fc']['kernel'], np.float64)  # [C, K]
  a = np.asarray(features, np.float64)
  others = [[k for k in range(kernel.shape[1]) if k != y] for y in np.asarray(labels)]
  weights = np.stack(
    [kernel[:, y] - kernel[:, o].mean(axis=1) for y, o in zip(np.asarray(labels), others)]
  )
  expected = _minmax(np.einsum('bhwc,bc->bhw', a, weights))
  for method in ('cam', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method, target='contrast')
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_contrast_maps_of_other_heads_are_grad_cam_of_the_centred_logits():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  head_fn = _head_fn(model, variables)
  centred = lambda f: head_fn(f) - jnp.mean(head_fn(f), axis=-1, keepdims=True)
  expected = attention.grad_cam(centred, features, labels)
  maps = model.attention_maps(variables, features, labels, target='contrast')
  np.testing.assert_allclose(maps, expected, atol=1e-6)
  assert not np.allclose(maps, model.attention_maps(variables, features, labels), atol=1e-3)


def test_attention_maps_unknown_target_lists_the_valid_ones():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  with pytest.raises(ValueError, match=r"'margin'.*logit, contrast"):
    model.attention_maps(variables, features, labels, target='margin')


def test_attention_maps_cam_needs_a_linear_head():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  with pytest.raises(ValueError, match=r'GAP \+ linear head'):
    model.attention_maps(variables, features, labels, method='cam')


def test_attention_maps_unknown_method_lists_the_valid_ones():
  model, variables, features, labels = _attention_case('tiny_cnn', 'linear')
  with pytest.raises(ValueError, match=r"'gradcam'.*auto, cam, grad_cam"):
    model.attention_maps(variables, features, labels, method='gradcam')


@pytest.mark.parametrize('head', ['linear', 'bn_linear'])
def test_attention_maps_under_jit_grad_and_pmap_with_the_model_closed_over(head):
  model, variables, features, labels = _attention_case('tiny_cnn', head)
  eager = model.attention_maps(variables, features, labels)
  maps = jax.jit(lambda v, f, y: model.attention_maps(v, f, y))(variables, features, labels)
  np.testing.assert_allclose(maps, eager, rtol=1e-6, atol=1e-6)
  static = jax.jit(lambda m, v, f, y: m.attention_maps(v, f, y), static_argnums=0)
  np.testing.assert_allclose(
    static(model, variables, features, labels), eager, rtol=1e-6, atol=1e-6
  )
  mapped = jax.pmap(lambda v, f, y: model.attention_maps(v, f, y), in_axes=(None, 0, 0))
  np.testing.assert_allclose(
    mapped(variables, features[None], labels[None])[0], eager, rtol=1e-6, atol=1e-6
  )

  def inside(f):  # what an attention loss does: weight the map, differentiate w.r.t. features
    return jnp.sum(model.attention_maps(variables, f, labels) * jnp.arange(16.0).reshape(4, 4))

  grads = jax.grad(inside)(features)
  assert grads.shape == features.shape
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown model name 'resnet9'.*resnet18.*vgg19"):
    get_model('resnet9', num_classes=2)


@pytest.mark.parametrize('name, head', [('resnet18', 'mlp'), ('tiny_cnn', 'vgg')])
def test_unknown_or_unsupported_head_lists_valid_heads(name, head):
  with pytest.raises(ValueError, match=rf"Unknown head '{head}'.*linear, bn_linear"):
    get_model(name, num_classes=2, head=head)


def test_vgg19_defaults_to_vgg_head_and_accepts_linear():
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  default = mf.abstract_variables(get_model('vgg19', num_classes=2), images)['params']['head']
  linear = mf.abstract_variables(get_model('vgg19', num_classes=2, head='linear'), images)
  assert set(default) == {'fc1', 'fc2', 'fc3'}
  assert linear['params']['head']['fc']['kernel'].shape == (512, 2)


@pytest.mark.parametrize('num_classes', [0, -1, 2.0])
def test_bad_num_classes_raises(num_classes):
  with pytest.raises(ValueError, match='num_classes'):
    get_model('tiny_cnn', num_classes=num_classes)


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_images_not_rank_4_raise_with_the_shape(name):
  model = get_model(name, num_classes=2)
  with pytest.raises(ValueError, match=r'images must be rank 4.*\(64, 64, 3\)'):
    model.init({'params': mf.KEY}, np.zeros((64, 64, 3), np.float32), train=False)


def test_apply_head_rejects_features_not_rank_4():
  model = get_model('tiny_cnn', num_classes=2)
  variables = mf.fake_variables(model, mf.images())
  with pytest.raises(ValueError, match=r'features must be rank 4.*\(2, 128\)'):
    model.apply(variables, np.zeros((2, 128), np.float32), method=Classifier.apply_head)


@pytest.mark.parametrize('name', ['tiny_cnn', 'resnet18', 'vgg19'])
def test_get_model_builds_the_normed_linear_head_for_every_model(name):
  model = get_model(name, num_classes=3, head='normed_linear')
  assert isinstance(model.head, NormedLinearHead)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = mf.abstract_variables(model, images)
  assert set(variables['params']['head']) == {'kernel'}
  channels = {'tiny_cnn': 128, 'resnet18': 512, 'vgg19': 512}[name]
  assert variables['params']['head']['kernel'].shape == (channels, 3)
  logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_attention_maps_of_the_normed_linear_head_are_grad_cam_and_refuse_cam():
  model, variables, features, labels = _attention_case('tiny_cnn', 'normed_linear')
  expected = attention.grad_cam(_head_fn(model, variables), features, labels)
  for method in ('auto', 'grad_cam'):
    maps = model.attention_maps(variables, features, labels, method=method)
    assert maps.shape == (2, 4, 4) and maps.dtype == jnp.float32
    np.testing.assert_array_equal(maps, expected)
  # Train mode: the head has no train-dependent layer, so the same maps.
  np.testing.assert_allclose(
    model.attention_maps(variables, features, labels, train=True), expected, atol=1e-6
  )
  with pytest.raises(ValueError, match=r'GAP \+ linear head'):
    model.attention_maps(variables, features, labels, method='cam')


def test_resolve_head_gives_ldam_drw_the_cosine_head_for_default():
  assert resolve_head('default', loss='ldam_drw') == 'normed_linear'
  assert resolve_head(None, loss='ldam_drw') == 'normed_linear'
  for loss in ('ce', 'weighted_ce', 'focal', 'class_balanced', None):
    assert resolve_head('default', loss=loss) is None  # the architecture's own head
  for head in ('linear', 'bn_linear', 'vgg', 'normed_linear'):  # an explicit head is kept
    assert resolve_head(head, loss='ldam_drw') == head


def _np_grad_cam_train(model, variables, features, labels, key):
  """Grad-CAM of the head in train mode written out: VJP of the summed true-class logits."""

  def head(f):
    logits, _ = model.apply(
      variables,
      f,
      train=True,
      method=Classifier.apply_head,
      mutable=['batch_stats'],
      rngs={'dropout': key},
    )
    return logits

  logits, vjp = jax.vjp(head, features)
  (grads,) = vjp(jax.nn.one_hot(labels, logits.shape[1]))  # d sum_b logits[b, y_b] / dA
  weights = np.asarray(grads, np.float64).mean(axis=(1, 2))  # [B, C]
  maps = np.einsum('bhwc,bc->bhw', np.asarray(features, np.float64), weights)
  low = maps.min(axis=(1, 2), keepdims=True)
  high = maps.max(axis=(1, 2), keepdims=True)
  return (maps - low) / (high - low), logits


@pytest.mark.parametrize('head', ['bn_linear', 'vgg'])
def test_train_mode_attention_maps_are_grad_cam_of_the_head_in_the_training_pass(head):
  model, variables, _, labels = _attention_case('tiny_cnn', head)
  images = mf.images(size=32, seed=3)
  key = jax.random.key(11)
  # The training forward pass: its logits, features and the head's dropout masks.
  (logits, inter), _ = model.apply(
    variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': key}
  )
  features = inter['features']
  expected, head_logits = _np_grad_cam_train(model, variables, features, labels, key)
  # The head alone, with the pass's rngs, reproduces the pass's logits: the same dropout masks
  # (flax derives the head's keys from its module path) and the same batch statistics.
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-6)

  maps = model.attention_maps(
    variables, features, labels, method='auto', train=True, rngs={'dropout': key}
  )
  assert maps.shape == features.shape[:3] and maps.dtype == jnp.float32
  np.testing.assert_allclose(maps, expected, atol=1e-5)
  # Train mode matters: running statistics / no dropout give other maps.
  eval_maps = model.attention_maps(variables, features, labels)
  assert not np.allclose(maps, eval_maps, atol=1e-3)
  if head == 'vgg':  # another dropout key, other masks, other maps
    other = model.attention_maps(
      variables, features, labels, train=True, rngs={'dropout': jax.random.key(12)}
    )
    assert not np.allclose(maps, other, atol=1e-3)


def test_train_mode_attention_maps_under_jit_and_grad():
  model, variables, features, labels = _attention_case('tiny_cnn', 'bn_linear')
  eager = model.attention_maps(variables, features, labels, train=True)
  jitted = jax.jit(lambda v, f, y: model.attention_maps(v, f, y, train=True))
  # Channels that ReLU left constant over the batch have zero batch variance: their 1/sqrt(eps)
  # amplifies the compiled program's rounding to ~1e-3 on some CPUs. Eval-mode statistics would
  # move the maps by far more (~0.8), so this tolerance still tells the two modes apart.
  maps = jitted(variables, features, labels)
  np.testing.assert_allclose(maps, eager, atol=1e-2)
  eval_maps = model.attention_maps(variables, features, labels, train=False)
  assert np.abs(maps - eval_maps).max() > 0.1

  def inside(f):  # what the train step's attention loss does
    return jnp.sum(
      model.attention_maps(variables, f, labels, train=True) * jnp.arange(16.0).reshape(4, 4)
    )

  grads = jax.grad(inside)(features)
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)
