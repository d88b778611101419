"""Config: defaults, yaml BASE chain, overrides, errors that name the key, and every key read by the code."""
import glob
import os
import re
import subprocess
import sys

import pytest

import config as config_module
from config import ConfigError, build_config, finalize_config, get_key, merge_opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaf_keys(node, prefix=''):
    for key, value in node.items():
        if isinstance(value, config_module.CN):
            yield from leaf_keys(value, prefix + key + '.')
        else:
            yield prefix + key


def source_text():
    """All code but the tests, without config.py's definition lines (`_C.KEY = default`)."""
    files = glob.glob(os.path.join(ROOT, '*.py')) + glob.glob(os.path.join(ROOT, 'tools', '*.py'))
    lines = (line for f in files for line in open(f, encoding='utf-8') if not line.startswith('_C.'))
    return ''.join(lines)


def unread_keys(keys, text):
    """Keys whose 'PARENT.LEAF' (or 'config.LEAF' for top-level keys) appears nowhere in the code."""
    unread = []
    for key in keys:
        parts = ['config'] + key.split('.')
        if not re.search(re.escape('.'.join(parts[-2:])) + r'\b', text):
            unread.append(key)
    return unread


def test_every_config_key_is_read_by_the_code():
    keys = [k for k in leaf_keys(build_config()) if k != 'BASE']
    assert unread_keys(keys, source_text()) == []


def test_key_scan_reports_a_key_nobody_reads():
    assert unread_keys(['TRAIN.NOT_A_REAL_KEY', 'DATA.IMAGE_SIZE'], source_text()) == ['TRAIN.NOT_A_REAL_KEY']


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def test_base_chain_merges_in_order(tmp_path):
    write(tmp_path / 'base.yaml', 'DATA:\n  IMAGE_SIZE: 64\n  CROP_PCT: 0.875\n')
    child = write(tmp_path / 'child.yaml', "BASE: ['base.yaml']\nDATA:\n  IMAGE_SIZE: 96\n")
    config = build_config(child)
    assert config.DATA.IMAGE_SIZE == 96 and config.DATA.CROP_PCT == 0.875


def test_unknown_yaml_key_is_rejected_with_its_name(tmp_path):
    bad = write(tmp_path / 'bad.yaml', 'TRAIN:\n  WARMUP_EPOCH: 3\n')
    with pytest.raises(ConfigError, match=r"unknown config key 'TRAIN.WARMUP_EPOCH'.*bad.yaml"):
        build_config(bad)


def test_wrong_value_type_is_rejected_with_key_and_value(tmp_path):
    bad = write(tmp_path / 'bad.yaml', 'DATA:\n  BATCH_SIZE: many\n')
    with pytest.raises(ConfigError, match=r"DATA.BATCH_SIZE.*'many'"):
        build_config(bad)


def test_seed_yaml_layout_still_loads(tmp_path):
    seed = write(tmp_path / 'seed.yaml', 'DATA:\n  IMAGE_SIZE: 224\n  CROP_PCT: 0.90\nMODEL:\n  TYPE: PiT\n'
                 '  NAME: pit_ti\n  DISTILL: False\n  TRANS:\n    PATCH_SIZE: 16\n    STRIDE: 8\n'
                 '    BASE_DIMS: [32, 32, 32]\n    DEPTH: [2, 6, 4]\n    HEADS: [2, 4, 8]\n')
    assert build_config(seed).MODEL.TRANS.HEADS == [2, 4, 8]


def test_opts_override_values_parsed_as_yaml():
    config = merge_opts(build_config(), ['TRAIN.BASE_LR', '0.001', 'AUG.CUTMIX_MINMAX', '[0.2, 0.8]',
                                       'TRAIN.GRAD_CLIP', 'None', 'AUG.AUTO_AUGMENT', 'rand-m7-n3'])
    assert config.TRAIN.BASE_LR == 0.001 and config.AUG.CUTMIX_MINMAX == [0.2, 0.8]
    assert config.TRAIN.GRAD_CLIP is None and config.AUG.AUTO_AUGMENT == 'rand-m7-n3'


def test_opts_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'TRAIN.LRR'"):
        merge_opts(build_config(), ['TRAIN.LRR', '1'])


def test_finalize_scales_lr_linearly_once_and_freezes():
    config = merge_opts(build_config(), ['DATA.BATCH_SIZE', '128', 'TRAIN.ACCUM_ITER', '2'])
    finalize_config(config, world_size=4)
    assert config.TRAIN.BASE_LR == pytest.approx(5e-4 * 128 * 4 * 2 / 512)
    assert config.DATA.BATCH_SIZE_EVAL == 128
    assert config.is_frozen()
    finalize_config(config, world_size=4)
    assert config.TRAIN.BASE_LR == pytest.approx(5e-4 * 128 * 4 * 2 / 512)


def test_finalize_rejects_a_value_outside_its_choices():
    config = merge_opts(build_config(), ['TRAIN.OPTIMIZER.NAME', 'Adam'])
    with pytest.raises(ConfigError, match=r"TRAIN.OPTIMIZER.NAME='Adam' is not one of"):
        finalize_config(config)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main_single_gpu.py'), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_unknown_config_key_exits_2_with_one_line():
    result = run_cli('-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'), '-opts', 'TRAIN.NOPE', '1')
    assert result.returncode == 2
    assert "unknown config key 'TRAIN.NOPE'" in result.stderr
    assert 'Traceback' not in result.stderr


def test_cli_missing_config_file_exits_with_its_name():
    result = run_cli('-cfg', 'configs/does_not_exist.yaml')
    assert result.returncode != 0 and "'configs/does_not_exist.yaml' not found" in result.stderr


def test_cli_bad_flag_is_an_argparse_error():
    result = run_cli('-batchsize', '3')
    assert result.returncode == 2 and 'unrecognized arguments' in result.stderr


def test_defaults_are_the_recipe_pit_was_trained_with():
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'))
    assert config.TRAIN.OPTIMIZER.NAME == 'AdamP' and config.TRAIN.LR_SCHEDULER.DEIT_LAG is True
    assert config.DATA.CROP_PCT == 0.875 and config.AUG.AUTO_AUGMENT == 'rand-m9-mstd0.5-inc1'


@pytest.mark.parametrize('opts, message', [
    (['TRAIN.NUM_EPOCHS', '2.5'], "expects an integer, got 2.5"),
    (['MODEL.TRANS.DEPTH', '[2, 6.5, 4]'], "'MODEL.TRANS.DEPTH' in -opts expects a list of integers, got [2, 6.5, 4]"),
    (['MODEL.TRANS.DEPTH', '[2, 0, 4]'], 'MODEL.TRANS.DEPTH=[2, 0, 4] must hold integers >= 1'),
    (['TRAIN.OPTIMIZER.BETAS', '[0.9, 1.2]'], 'BETAS=[0.9, 1.2] must be two numbers in [0, 1)'),
    (['AUG.SCALE', '[0.5, 0.1]'], 'AUG.SCALE=[0.5, 0.1] must be [low, high]'),
    (['TRAIN.WARMUP_EPOCHS', '400'], 'TRAIN.WARMUP_EPOCHS=400 must be in [0, NUM_EPOCHS'),
    (['TRAIN.GRAD_CLIP', '0'], 'TRAIN.GRAD_CLIP=0.0 must be > 0'),
])
def test_build_config_checks_every_value_and_names_it(opts, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(opts=opts)


def test_integral_floats_are_accepted_for_integer_keys():
    assert build_config(opts=['TRAIN.NUM_EPOCHS', '30.0']).TRAIN.NUM_EPOCHS == 30


def test_loader_workers_are_auto_by_default_or_a_count_from_yaml_or_opts(tmp_path):
    assert build_config().DATA.NUM_WORKERS == 'auto'
    assert build_config(write(tmp_path / 'w.yaml', 'DATA:\n  NUM_WORKERS: 3\n')).DATA.NUM_WORKERS == 3
    assert build_config(opts=['DATA.NUM_WORKERS', '0']).DATA.NUM_WORKERS == 0
    assert build_config(opts=['DATA.NUM_WORKERS', '6', 'DATA.NUM_WORKERS', 'auto']).DATA.NUM_WORKERS == 'auto'


@pytest.mark.parametrize('value, message', [
    ('-1', "DATA.NUM_WORKERS=-1 must be >= 0 or 'auto'"), ('many', "DATA.NUM_WORKERS='many' must be >= 0 or 'auto'"),
    ('2.5', "'DATA.NUM_WORKERS' in -opts expects an integer or 'auto', got 2.5"),
    ('True', "'DATA.NUM_WORKERS' in -opts expects an integer or 'auto', got True")])
def test_a_bad_loader_worker_count_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as error:
        build_config(opts=['DATA.NUM_WORKERS', value])
    assert message in str(error.value) and '\n' not in str(error.value)


def test_a_base_chain_that_includes_itself_is_named(tmp_path):
    write(tmp_path / 'a.yaml', "BASE: ['b.yaml']\n")
    write(tmp_path / 'b.yaml', "BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match=r'includes itself through BASE: .*a.yaml -> .*b.yaml -> .*a.yaml'):
        build_config(str(tmp_path / 'a.yaml'))


def test_a_checkpoint_description_is_the_base_and_a_contradicting_model_key_is_named():
    described = {'MODEL.TRANS.BASE_DIMS': [8, 8, 8], 'MODEL.NUM_CLASSES': 10, 'DATA.CROP_PCT': 0.9}
    config = build_config(described=described, described_by='ckpt.pdparams')
    assert config.MODEL.TRANS.BASE_DIMS == [8, 8, 8] and config.DATA.CROP_PCT == 0.9
    assert build_config(opts=['DATA.CROP_PCT', '0.875'], described=described).DATA.CROP_PCT == 0.875
    with pytest.raises(ConfigError, match=r"MODEL.TRANS.BASE_DIMS=\[32, 32, 32\] contradicts the checkpoint "
                                          r"'ckpt.pdparams'.*\[8, 8, 8\]"):
        build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), described=described, described_by='ckpt.pdparams')


def default_of(key):
    """The default of a key, or for a None default the kind of value it takes."""
    value = get_key(build_config(), key)
    return config_module._NULLABLE[key] if value is None else value


def wrong_type_value(default):
    """-opts text of a value of another type than default's (for lists: items of another type)."""
    if isinstance(default, (list, tuple)):
        return '[1, 2, 3]' if default and isinstance(default[0], str) else "['a', 'b', 'c']"
    return {bool: 'maybe', int: 'many', float: 'fast', str: '[1]'}[type(default)]


ALL_KEYS = list(leaf_keys(build_config()))


@pytest.mark.parametrize('key', ALL_KEYS)
def test_every_key_refuses_a_value_of_another_type_naming_the_key(key):
    value = wrong_type_value(default_of(key))
    with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}' in -opts expects .*, got "):
        build_config(opts=[key, value])


@pytest.mark.parametrize('key', [k for k in ALL_KEYS if k not in config_module._NULLABLE
                                 and 'none' not in config_module._CHOICES.get(k, ())])
def test_only_the_keys_that_may_be_none_take_none(key):
    with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}' in -opts expects .*, got None"):
        build_config(opts=[key, 'None'])


def test_an_empty_command_line_value_is_the_empty_string_not_none():
    assert build_config(opts=['AUG.AUTO_AUGMENT', '']).AUG.AUTO_AUGMENT == ''
    assert build_config(opts=['TRAIN.GRAD_CLIP', 'None', 'MODEL.PRETRAINED', 'null']).TRAIN.GRAD_CLIP is None


@pytest.mark.parametrize('key', [k for k in ALL_KEYS if type(default_of(k)) is float])
@pytest.mark.parametrize('value', ['.nan', '.inf', '-.inf'])
def test_every_number_key_refuses_nan_and_infinity(key, value):
    with pytest.raises(ConfigError, match=f"'{re.escape(key)}' in -opts expects a finite number"):
        build_config(opts=[key, value])


# a value of the right type outside the key's range, for every key that holds numbers
OUT_OF_RANGE = {
    'DATA.BATCH_SIZE': '0', 'DATA.BATCH_SIZE_EVAL': '0', 'DATA.IMAGE_SIZE': '0', 'DATA.CROP_PCT': '1.5',
    'DATA.NUM_WORKERS': '-1', 'DATA.IMAGENET_MEAN': '[0.5, 0.5]', 'DATA.IMAGENET_STD': '[0.2, 0.0, 0.2]',
    'DATA.REPEATED_AUG_REPEATS': '0', 'MODEL.NUM_CLASSES': '0', 'MODEL.DROPOUT': '1.0',
    'MODEL.ATTENTION_DROPOUT': '-0.1', 'MODEL.DROP_PATH': '1.0', 'MODEL.TRANS.PATCH_SIZE': '0',
    'MODEL.TRANS.STRIDE': '0', 'MODEL.TRANS.BASE_DIMS': '[32, 0, 32]', 'MODEL.TRANS.DEPTH': '[2, 6]',
    'MODEL.TRANS.HEADS': '[]', 'MODEL.TRANS.MLP_RATIO': '0.001', 'TRAIN.LAST_EPOCH': '-1', 'TRAIN.NUM_EPOCHS': '0',
    'TRAIN.WARMUP_EPOCHS': '301', 'TRAIN.COOLDOWN_EPOCHS': '300', 'TRAIN.WEIGHT_DECAY': '-0.05',
    'TRAIN.BASE_LR': '0', 'TRAIN.WARMUP_START_LR': '-1e-6', 'TRAIN.END_LR': '-1e-5', 'TRAIN.GRAD_CLIP': '-1',
    'TRAIN.ACCUM_ITER': '0', 'TRAIN.LINEAR_SCALED_LR': '-512', 'TRAIN.SMOOTHING': '1.0',
    'TRAIN.DISTILLATION_ALPHA': '1.5', 'TRAIN.DISTILLATION_TAU': '0', 'TRAIN.MODEL_EMA_DECAY': '1.1',
    'TRAIN.LR_SCHEDULER.MILESTONES': '[60, 30]', 'TRAIN.LR_SCHEDULER.DECAY_RATE': '2',
    'TRAIN.OPTIMIZER.EPS': '0', 'TRAIN.OPTIMIZER.BETAS': '[0.9, 1.0]', 'TRAIN.OPTIMIZER.MOMENTUM': '-0.9',
    'TRAIN.OPTIMIZER.WD_RATIO': '-1', 'TRAIN.OPTIMIZER.DELTA': '-0.1', 'AUG.SCALE': '[0.5, 0.1]',
    'AUG.RATIO': '[0, 1]', 'AUG.HFLIP': '1.5', 'AUG.COLOR_JITTER': '-0.4', 'AUG.RE_PROB': '-0.1', 'AUG.RE_COUNT': '0',
    'AUG.MIXUP': '-1', 'AUG.CUTMIX': '-1', 'AUG.CUTMIX_MINMAX': '[0.8, 0.2]', 'AUG.MIXUP_PROB': '2',
    'AUG.MIXUP_SWITCH_PROB': '-1', 'SAVE_FREQ': '0', 'KEEP_CHECKPOINTS': '-1', 'REPORT_FREQ': '0',
    'VALIDATE_FREQ': '0', 'SEED': '-1', 'CPU_THREADS': '-1', 'NGPUS': '0', 'SAVE_ON_SIGTERM_AFTER': '-1',
}


def test_the_range_table_covers_every_key_that_holds_numbers():
    def numeric(default):
        item = default[0] if isinstance(default, (list, tuple)) and default else default
        return type(item) in (int, float)
    takes_numbers = [k for k in ALL_KEYS if numeric(default_of(k)) or k in config_module._ALSO_INT]
    assert sorted(takes_numbers) == sorted(OUT_OF_RANGE)


@pytest.mark.parametrize('key, value', OUT_OF_RANGE.items())
def test_every_number_key_refuses_a_value_outside_its_range_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_config(opts=[key, value])


@pytest.mark.parametrize('text, key', [
    ("TRAIN:\n  OPTIMIZER:\n    BETAS: [a, 0.9]\n", 'TRAIN.OPTIMIZER.BETAS'),
    ('DATA:\n  IMAGENET_MEAN: [0.5, 0.5, 0.5, 0.5]\n', 'DATA.IMAGENET_MEAN'),
    ('AUG:\n  SCALE: [0.08, [1.0]]\n', 'AUG.SCALE'),
    ('MODEL:\n  TRANS:\n    HEADS: [2, 4.5, 8]\n', 'MODEL.TRANS.HEADS'),
])
def test_list_items_of_a_yaml_file_are_checked_and_the_key_and_file_named(tmp_path, text, key):
    bad = write(tmp_path / 'bad.yaml', text)
    with pytest.raises(ConfigError, match=f"config key '{re.escape(key)}' in '.*bad.yaml' expects a list of"):
        build_config(bad)


def test_a_yaml_base_that_is_not_a_file_name_is_named(tmp_path):
    bad = write(tmp_path / 'bad.yaml', 'BASE: [{a: 1}]\n')
    with pytest.raises(ConfigError, match=r"BASE in config file '.*bad.yaml' must be a file name"):
        build_config(bad)


def test_list_values_keep_their_kind_and_exponents_read_as_numbers():
    config = build_config(opts=['TRAIN.OPTIMIZER.BETAS', '[0.9, 1e-1]', 'MODEL.TRANS.DEPTH', '[1, 2.0, 3]'])
    assert config.TRAIN.OPTIMIZER.BETAS == (0.9, 0.1) and config.MODEL.TRANS.DEPTH == [1, 2, 3]
