"""The paper's suites: their rows, the configs they build, the runner (resume, refusal) and the
report of fabricated runs (tests/helpers/runs.py's fake_train)."""

import json

import numpy as np
from PIL import Image
import pytest

from care_jax import config as config_lib
from care_jax import suites
from care_jax import training
from tests.helpers import runs

# A CARE row: the paper's alpha and its two stages, as configs/synthetic_care.py.
CARE = ('care.alpha=0.5', 'care.protocol=two_stage', 'train.eval_every_steps=50')


def test_table1_rows_cross_care_with_csl_fl_and_da():
  suite = suites.SUITES['table1']
  assert list(suite.rows) == [
    'baseline',
    'CARE',
    'CSL',
    'CARE+CSL',
    'FL',
    'CARE+FL',
    'DA',
    'CARE+DA',
  ]
  assert suite.rows['baseline'] == ('care.alpha=0.0',)
  assert suite.rows['CARE'] == CARE
  assert suite.rows['CARE+CSL'] == ('loss.name=weighted_ce', *CARE)
  assert suite.rows['FL'] == ('loss.name=focal', 'care.alpha=0.0')
  assert set(suite.rows['CARE+DA']) == {
    'data.augment.enabled=True',
    'data.sampling=class_balanced',
    *CARE,
  }
  assert suite.pairs == (
    ('baseline', 'CARE'),
    ('CSL', 'CARE+CSL'),
    ('FL', 'CARE+FL'),
    ('DA', 'CARE+DA'),
  )


@pytest.mark.parametrize('name', ['table1', 'modern', 'backbones', 'smoke'])
def test_care_rows_differ_from_their_control_in_alpha_and_the_two_stages(name):
  suite = suites.SUITES[name]
  assert len(suite.pairs) * 2 == len(suite.rows)
  for control, treatment in suite.pairs:
    assert treatment in ('CARE', f'CARE+{control}')
    assert suite.rows[control][-1] == 'care.alpha=0.0'
    assert suite.rows[treatment] == (*suite.rows[control][:-1], *CARE)


def test_modern_backbones_box_scale_alpha_and_smoke_rows():
  modern = suites.SUITES['modern'].rows
  assert {modern[r][0] for r in ('LA', 'BS', 'LDAM-DRW', 'CB', 'LA-posthoc')} == {
    'loss.name=logit_adjusted',
    'loss.name=balanced_softmax',
    'loss.name=ldam_drw',
    'loss.name=class_balanced',
    'loss.posthoc_tau=1.0',
  }
  backbones = suites.SUITES['backbones'].rows
  assert [backbones[r][0] for r in backbones][::2] == [
    'model.name=resnet18',
    'model.name=resnet50',
    'model.name=resnet152',
    'model.name=vgg19',
  ]
  box = suites.SUITES['box_scale']
  assert box.rows['baseline'] == ('care.alpha=0.0',)
  assert [box.rows[r] for r in box.rows][1:] == [
    (*CARE, f'data.box_scale={s}') for s in (0.7, 0.9, 1.0, 1.1, 1.3)
  ]
  alpha = suites.SUITES['alpha']
  assert [alpha.rows[r] for r in alpha.rows] == [('care.alpha=0.0',)] + [
    (f'care.alpha={a}', *CARE[1:]) for a in (0.1, 0.3, 0.5, 0.7, 0.9)
  ]
  assert alpha.pairs[0] == ('alpha_0.0', 'alpha_0.1') and len(alpha.pairs) == 5
  assert list(suites.SUITES['smoke'].rows) == ['baseline', 'CARE']


@pytest.mark.parametrize('name', ['table1', 'modern', 'box_scale', 'backbones', 'alpha', 'smoke'])
def test_every_row_validates(name):
  configs = suites.row_configs(runs.base_config(), suites.SUITES[name].rows)
  assert list(configs) == list(suites.SUITES[name].rows)


def test_data_augmentation_rows_validate():
  rows = suites.select_rows('table1', ['DA', 'CARE+DA'])
  configs = suites.row_configs(runs.base_config(), rows)
  assert configs['CARE+DA'].data.augment.enabled and configs['DA'].care.alpha == 0.0
  assert configs['DA'].data.sampling == 'class_balanced'


def test_pretrained_weights_go_to_the_rows_of_their_model():
  configs = suites.row_configs(
    runs.base_config(),
    suites.SUITES['backbones'].rows,
    pretrained={'resnet50': '/w/r50.safetensors'},
  )
  assert configs['CARE+resnet50'].model.pretrained == '/w/r50.safetensors'
  assert configs['resnet50'].model.pretrained == '/w/r50.safetensors'
  assert configs['resnet18'].model.pretrained is None


def test_rows_and_suites_are_checked_by_name():
  assert list(suites.select_rows('table1', ['CARE', 'baseline'])) == ['baseline', 'CARE']
  with pytest.raises(ValueError, match=r"suite 'table1' has no rows \['CARE\+XL'\]"):
    suites.select_rows('table1', ['CARE+XL'])
  with pytest.raises(ValueError, match="unknown suite 'tabel1'"):
    suites.select_rows('tabel1')
  with pytest.raises(ValueError, match=r"row 'baseline'.*care\.alpha"):
    suites.row_configs(runs.base_config(), {'baseline': ('care.alpha=2.0',)})


def test_report_of_fabricated_runs_with_hand_checked_numbers(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(training, 'train_and_evaluate', runs.fake_train(calls))
  report = suites.run_suite('smoke', runs.base_config('isic2018'), [0, 1, 2], str(tmp_path))
  assert sorted(calls) == sorted(runs.FAKE_RESULTS)
  rows = report['rows']
  # rare recall: baseline 10, 20, 30 -> 20 ± 10 (sample std); CARE 30, 35, 40 -> 35 ± 5.
  assert rows['baseline']['rare_recall'] == pytest.approx({'mean': 0.2, 'std': 0.1})
  assert rows['CARE']['rare_recall'] == pytest.approx({'mean': 0.35, 'std': 0.05})
  assert rows['CARE']['paper'] == pytest.approx({'rare_recall': 0.5217, 'mca': 0.7616})
  # Paired differences 0.20, 0.15, 0.10: mean 0.15, sd 0.05, t = 0.15 / (0.05 / sqrt 3)
  # = 5.196 with 2 degrees of freedom, whose two-sided p is 1 - t / sqrt(2 + t^2).
  t = 0.15 / (0.05 / np.sqrt(3))
  (pair,) = report['pairs']
  assert pair['control'] == 'baseline' and pair['treatment'] == 'CARE'
  assert pair['mean_difference'] == pytest.approx(0.15)
  assert pair['p_value'] == pytest.approx(1 - t / np.sqrt(2 + t**2), rel=1e-6)
  assert pair['wins'] == 3 and pair['seeds'] == [0, 1, 2]

  table = (tmp_path / 'report.md').read_text()
  assert (
    '| method | rare recall (test, %) | MCA (test, %) | paper rare recall (%) | '
    'paper MCA (%) | seeds |' in table
  )
  # Best means in bold; the MCA tie (60.00 both) bolds both rows.
  assert '| baseline | 20.00 ± 10.00 | **60.00 ± 10.00** | 47.83 | 75.75 | 3 |' in table
  assert '| CARE | **35.00 ± 5.00** | **60.00 ± 5.00** | 52.17 | 76.16 | 3 |' in table
  assert '| CARE vs baseline | 3 | +15.00 | 0.0351 | 3/3 |' in table
  assert (
    '| CARE | `care.alpha=0.5`, `care.protocol=two_stage`, `train.eval_every_steps=50` |' in table
  )
  assert json.loads((tmp_path / 'report.json').read_text()) == json.loads(json.dumps(report))
  with Image.open(tmp_path / 'report.png') as image:
    assert image.format == 'PNG' and image.size[0] > 300


def test_one_seed_reports_no_spread_and_no_p_value_and_no_paper_for_other_data(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(training, 'train_and_evaluate', runs.fake_train([]))
  suites.run_suite('smoke', runs.base_config('synthetic_lesions'), [1], str(tmp_path))
  table = (tmp_path / 'report.md').read_text()
  assert '| baseline | 20.00 | **60.00** | 1 |' in table
  assert '| CARE | **35.00** | **60.00** | 1 |' in table
  assert '| CARE vs baseline | 1 | +15.00 | n/a | 1/1 |' in table
  assert 'paper' not in table


def test_finished_runs_are_not_repeated(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(training, 'train_and_evaluate', runs.fake_train(calls))
  suites.run_suite('smoke', runs.base_config(), [0, 1], str(tmp_path), rows=['baseline'])
  assert calls == [(0.0, 0), (0.0, 1)]
  report = (tmp_path / 'report.md').read_text()
  assert '| baseline |' in report and '| CARE |' not in report
  # The whole suite with one more seed trains only what is missing.
  calls.clear()
  suites.run_suite('smoke', runs.base_config(), [0, 1, 2], str(tmp_path))
  assert calls == [(0.0, 2), (0.5, 0), (0.5, 1), (0.5, 2)]
  monkeypatch.setattr(training, 'train_and_evaluate', runs.no_training)
  report = suites.run_suite('smoke', runs.base_config(), [0, 1, 2], str(tmp_path))
  assert report['rows']['CARE']['rare_recall']['mean'] == pytest.approx(0.35)


def test_a_finished_run_of_another_config_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(training, 'train_and_evaluate', runs.fake_train([]))
  suites.run_suite('smoke', runs.base_config(), [0], str(tmp_path))
  monkeypatch.setattr(training, 'train_and_evaluate', runs.no_training)
  other = config_lib.apply_overrides(runs.base_config(), ['care.lam=0.1'])
  with pytest.raises(
    ValueError,
    match=r'baseline.*seed_0 holds a run of another config.*'
    r'care\.lam',
  ):
    suites.run_suite('smoke', other, [0], str(tmp_path))


def test_the_report_shows_macro_auroc_and_ece_of_runs_that_scored_them():
  runs = {
    'baseline': [
      {'seed': s, 'test': {'rare_recall': 0.2, 'mca': 0.6, 'macro_auroc': a, 'ece': 0.1}}
      for s, a in ((0, 0.7), (1, 0.8))
    ],
    'CARE': [
      {'seed': s, 'test': {'rare_recall': 0.5, 'mca': 0.7, 'macro_auroc': 0.9, 'ece': e}}
      for s, e in ((0, 0.05), (1, 0.15))
    ],
  }
  rows = suites.select_rows('smoke')
  report = suites.build_report('smoke', rows, runs, dataset='synthetic_lesions')
  assert report['rows']['baseline']['macro_auroc']['mean'] == pytest.approx(0.75)
  table = suites.format_report(report)
  assert '| method | rare recall (test, %) | MCA (test, %) | macro AUROC (test, %) | ' in table
  assert '| baseline | 20.00 ± 0.00 | 60.00 ± 0.00 | 75.00 ± 7.07 | 10.00 ± 0.00 | 2 |' in table
  assert '| CARE | **50.00 ± 0.00** | **70.00 ± 0.00** | 90.00 ± 0.00 | 10.00 ± 7.07 | 2 |' in table


def test_the_guidance_suite_runs_ce_care_and_every_method_paired_against_both():
  suite = suites.SUITES['guidance']
  methods = suites.GUIDANCE_METHODS
  assert list(suite.rows) == ['CE', 'CARE', *methods]
  assert suite.rows['CE'] == ('care.alpha=0.0',) and suite.rows['CARE'] == ('care.alpha=0.5',)
  for name, method in methods.items():
    assert suite.rows[name] == (f'guidance.method={method}',)
    assert ('CE', name) in suite.pairs and ('CARE', name) in suite.pairs
  assert len(suite.pairs) == 1 + 2 * len(methods) and suite.pairs[0] == ('CE', 'CARE')


@pytest.mark.parametrize('dataset', list(suites.GUIDANCE_DATASETS))
def test_the_guidance_suites_base_configs_and_its_ce_and_care_rows_validate(dataset):
  name, overrides = suites.GUIDANCE_DATASETS[dataset]
  base = config_lib.apply_overrides(config_lib.load_config(name), list(overrides))
  assert base.data.name == dataset.removesuffix('_swapped')
  rows = suites.SUITES['guidance'].rows
  # The method rows need the `guidance` section of the config (issue 32's step).
  names = list(rows) if 'guidance' in base else ['CE', 'CARE']
  configs = suites.row_configs(base, {n: rows[n] for n in names})
  assert [c.guidance.method for c in configs.values()][2:] == [
    suites.GUIDANCE_METHODS[n] for n in names[2:]
  ]


def test_the_guidance_report_adds_accuracy_attention_time_and_accuracy_pairs():
  def run(seed, accuracy, mass, seconds):
    attention = {'mass_inside': mass, 'pointing_game': 0.5, 'iou': 0.25, 'num_images': 9}
    test = {'accuracy': accuracy, 'mca': accuracy, 'rare_recall': None, 'attention': attention}
    return {'seed': seed, 'test': test, 'train_seconds': seconds}

  results = {
    'CE': [run(0, 0.5, 0.2, 10.0), run(1, 0.6, 0.4, 14.0)],
    'CARE': [run(0, 0.7, 0.6, 12.0), run(1, 0.7, 0.8, 12.0)],
    'RRR': [run(0, 0.9, 0.5, 30.0), run(1, 0.95, 0.5, 30.0)],
  }
  rows = {n: suites.SUITES['guidance'].rows[n] for n in results}
  report = suites.build_report('guidance', rows, results, dataset='decoy_digits')
  guidance = report['guidance']['rows']
  assert guidance['CE']['accuracy'] == pytest.approx({'mean': 0.55, 'std': np.sqrt(0.005)})
  assert guidance['CARE']['energy_in_box']['mean'] == pytest.approx(0.7)
  assert guidance['RRR']['time_over_ce'] == pytest.approx(30.0 / 12.0)
  assert guidance['CE']['rare_recall'] == {'mean': None, 'std': None}
  pairs = {(p['control'], p['treatment']): p for p in report['guidance']['accuracy_pairs']}
  assert set(pairs) == {('CE', 'CARE'), ('CE', 'RRR'), ('CARE', 'RRR')}
  assert pairs[('CE', 'RRR')]['mean_difference'] == pytest.approx(0.375)
  assert pairs[('CARE', 'RRR')]['wins'] == 2
  table = suites.format_report(report)
  assert '## Accuracy, attention and cost (test)' in table
  assert '| RRR | 92.50 ± 3.54 | 92.50 ± 3.54 | n/a | 50.00 ± 0.00 | 50.00 ± 0.00 | ' in table
  assert '| CARE | 70.00 ± 0.00 | 70.00 ± 0.00 | n/a | 70.00 ± 14.14 |' in table
  assert table.count('| 2.50x | n/a | 2 |') == 1 and '| 1.00x | n/a | 2 |' in table
  assert '## Paired comparisons (accuracy, same seeds)' in table
  assert '| RRR vs CE | 2 | +37.50 |' in table


def test_the_guidance_report_shows_the_train_steps_memory_over_ces_and_na_for_older_runs():
  def run(seed, temp_bytes):
    test = {'accuracy': 0.5, 'mca': 0.5, 'rare_recall': None}
    memory = {'temp_bytes': temp_bytes, 'argument_bytes': 7, 'output_bytes': 7, 'alias_bytes': 6}
    return {'seed': seed, 'test': test, 'train_seconds': 10.0, 'train_step_memory': memory}

  older = run(1, 0)
  del older['train_step_memory']  # Written before the runs recorded their step's memory.
  results = {
    'CE': [run(0, 1000), run(1, 1000)],
    'CARE': [run(0, 1100), run(1, 1100)],
    'RRR': [older, {**run(0, 0), 'train_step_memory': None}],  # None: no analysis on its device.
  }
  rows = {n: suites.SUITES['guidance'].rows[n] for n in results}
  report = suites.build_report('guidance', rows, results, dataset='decoy_digits')
  guidance = report['guidance']['rows']
  assert guidance['CARE']['memory_over_ce'] == pytest.approx(1.1)
  assert guidance['RRR']['memory_over_ce'] is None
  table = suites.format_report(report)
  assert '| time / CE | memory / CE | seeds |' in table
  assert '| 1.00x | 1.10x | 2 |' in table and '| 1.00x | n/a | 2 |' in table


def test_the_guidance_report_reads_the_energy_in_the_box_and_falls_back_to_the_mass_inside():
  def run(seed, energy):
    attention = {'mass_inside': 0.9, 'pointing_game': 0.5, 'iou': 0.25, 'num_images': 9}
    if energy is not None:
      attention['energy_in_box'] = energy
    test = {'accuracy': 0.5, 'mca': 0.5, 'rare_recall': None, 'attention': attention}
    return {'seed': seed, 'test': test, 'train_seconds': 1.0}

  results = {'CE': [run(0, 0.2), run(1, 0.4)], 'ActDiff': [run(0, None)]}
  rows = {n: suites.SUITES['guidance'].rows[n] for n in results}
  guidance = suites.build_report('guidance', rows, results, dataset='decoy_digits')['guidance']
  assert guidance['rows']['CE']['energy_in_box']['mean'] == pytest.approx(0.3)
  # A run of an earlier version: the min-max map's mass inside, its energy.
  assert guidance['rows']['ActDiff']['energy_in_box']['mean'] == pytest.approx(0.9)
