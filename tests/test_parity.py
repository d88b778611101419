"""Numerical parity with timm's PiT (PyTorch) and the published sizes (params, GMACs).

The small fixtures (tests/fixtures, written by tools/make_parity_fixture.py) run everywhere. The full-size
comparison of all eight official variants needs torch and timm: in this process when importable, otherwise
in the interpreter named by PIT_REFERENCE_PYTHON, e.g.

    PIT_REFERENCE_PYTHON=/path/to/torch-env/bin/python python -m pytest tests/test_parity.py -k official
"""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from config import build_config, merge_opts
from pit import build_pit
from checkpoint import convert_weights
from complexity import count_macs, count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
ATOL = 1e-4
# fp32 rounding grows with the logits' scale: torch alone moves pit_b's logits (|logit| up to 13) by 5e-5 when its
# oneDNN kernels are switched off, and the gemm path MKL takes (AVX2 or AVX-512) does the same on our side.
RTOL = 1e-5


def within_tolerance(diffs, reference):
    """Every max |diff| <= ATOL + RTOL * max |reference logits| (of the same output)."""
    keys = {'eval': 'logits', 'train_cls': 'train_cls', 'train_dist': 'train_dist'}
    return all(diff <= ATOL + RTOL * np.abs(reference[keys[k]]).max() for k, diff in diffs.items())


def converted_model(cfg, src, tmp_path):
    """Convert src with the CLI, then load the result into a fresh model of cfg without drop path."""
    dst = str(tmp_path / 'converted.pdparams')
    convert_weights(build_config(cfg), src, dst)
    model = build_pit(merge_opts(build_config(cfg), ['MODEL.DROP_PATH', '0.0']))
    model.set_state_dict(paddle.load(dst)['model'])
    return model


def max_diffs(model, reference):
    """{'eval': max |logits - ref|, and for distilled models 'train_cls', 'train_dist'}."""
    x = paddle.to_tensor(reference['input'])
    with paddle.no_grad():
        model.eval()  # (Paddle 2.6's Layer.eval/train return None: no chaining)
        diffs = {'eval': np.abs(model(x).numpy() - reference['logits']).max()}
        if 'train_cls' in reference:
            model.train()
            cls_logits, dist_logits = model(x)
            diffs['train_cls'] = np.abs(cls_logits.numpy() - reference['train_cls']).max()
            diffs['train_dist'] = np.abs(dist_logits.numpy() - reference['train_dist']).max()
    return diffs


@pytest.mark.parametrize('name', ['pit_tiny', 'pit_tiny_distilled'])
def test_converted_fixture_matches_timm_logits(tmp_path, name):
    reference = np.load(os.path.join(FIXTURES, name + '.npz'))
    model = converted_model(os.path.join(FIXTURES, name + '.yaml'), os.path.join(FIXTURES, name + '.pth'), tmp_path)
    diffs = max_diffs(model, reference)
    assert set(diffs) == ({'eval', 'train_cls', 'train_dist'} if 'distilled' in name else {'eval'})
    assert within_tolerance(diffs, reference), diffs


OFFICIAL = ['pit_ti', 'pit_xs', 'pit_s', 'pit_b', 'pit_ti_distilled', 'pit_xs_distilled', 'pit_s_distilled',
            'pit_b_distilled']


def write_reference(name, out_dir):
    """OUT/NAME.pth and OUT/NAME.npz from timm (tools/make_parity_fixture.py), run by this python when it has torch
    and timm, else by PIT_REFERENCE_PYTHON; skip if neither."""
    python = sys.executable
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        python = os.environ.get('PIT_REFERENCE_PYTHON')
        if not python:
            pytest.skip(f'torch+timm not importable: {e}; set PIT_REFERENCE_PYTHON to a python that has them')
    script = os.path.join(ROOT, 'tools', 'make_parity_fixture.py')
    subprocess.run([python, script, 'variant', name, str(out_dir)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize('name', OFFICIAL)
def test_official_variant_matches_timm(tmp_path, name):
    write_reference(name, tmp_path)
    reference = np.load(str(tmp_path / (name + '.npz')))
    model = converted_model(os.path.join(ROOT, 'configs', name + '.yaml'), str(tmp_path / (name + '.pth')),
                            tmp_path)
    diffs = max_diffs(model, reference)
    print(f'{name}: max abs logit diff ' + ', '.join(f'{k} {v:.2e}' for k, v in diffs.items()))
    assert within_tolerance(diffs, reference), diffs


# ---------------------------------------------------------------- published sizes

# naver-ai/pit and timm: GMACs at 224 px (fvcore counting), parameters
PUBLISHED_GMACS = {'pit_ti': 0.70, 'pit_xs': 1.40, 'pit_s': 2.88, 'pit_b': 12.42}


@pytest.mark.parametrize('name', sorted(PUBLISHED_GMACS))
def test_counted_gmacs_round_to_the_published_figure(name):
    model = build_pit(build_config(os.path.join(ROOT, 'configs', name + '.yaml')))
    assert round(count_macs(model, 224)['total'] / 1e9, 2) == PUBLISHED_GMACS[name]


def test_count_macs_follows_its_definition_on_a_small_model():
    """patch conv, per stage: blocks (qkv, q k^T, attn v, proj, 2 MLP linears, 2 LayerNorms), pooling conv and
    fc, final LayerNorm on the class token, head; for the pit_micro sizes at 24 px."""
    model = build_pit(build_config(os.path.join(FIXTURES, 'pit_micro.yaml')))
    grids, widths, classes = [5, 3, 2], [2, 4, 8], 5
    conv = grids[0] ** 2 * widths[0] * 3 * 8 * 8
    conv += sum(grids[s + 1] ** 2 * widths[s + 1] * 3 * 3 for s in range(2))  # depthwise: 1 input channel each
    linear = attention = layernorm = 0
    for grid, width in zip(grids, widths):
        tokens = grid * grid + 1
        linear += tokens * width * (3 * width + width + 4 * width + 4 * width)
        attention += 2 * tokens * tokens * width
        layernorm += 5 * 2 * tokens * width
    linear += sum(widths[s] * widths[s + 1] for s in range(2)) + widths[-1] * classes
    layernorm += 5 * widths[-1]
    counts = count_macs(model, 24)
    assert counts == {'conv': conv, 'linear': linear, 'attention': attention, 'layernorm': layernorm,
                      'total': conv + linear + attention + layernorm}


def test_count_macs_restores_train_mode_and_count_params_counts_every_weight():
    model = build_pit(build_config(os.path.join(FIXTURES, 'pit_micro.yaml')))
    model.train()
    count_macs(model, 24)
    assert model.training
    assert count_params(model) == sum(int(np.prod(v.shape)) for v in model.state_dict().values())


def test_model_info_prints_params_and_gmacs():
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'model_info.py'), '-cfg',
                             os.path.join(ROOT, 'configs', 'pit_ti.yaml')], capture_output=True, text=True)
    assert result.returncode == 0
    assert 'pit_ti @ 224px: 4.85M params, 0.70 GMACs' in result.stdout
