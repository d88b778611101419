"""tools/convert_weights.py: every supported layout converts to the same .pdparams; failures leave no file."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from checkpoint import CheckpointWriteError, convert_weights, described_keys
from config import build_config
from pit import build_pit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
MICRO_CFG = os.path.join(FIXTURES, 'pit_micro.yaml')

# one small timm model saved by torch in every layout and wrapping the converter reads
MICRO_SOURCES = ['pit_micro_naver.pth', 'pit_micro_timm.pth', 'pit_micro_timm08.pth', 'pit_micro_ddp.pth',
                 'pit_micro_deit.pth', 'pit_micro_timm.safetensors']


def logits_of(pdparams, cfg=MICRO_CFG):
    """Eval logits on the fixture input of a fresh model loaded with plain paddle.load + set_state_dict."""
    model = build_pit(build_config(cfg))
    missing, unexpected = model.set_state_dict(paddle.load(pdparams)['model'])
    assert not missing and not unexpected
    model.eval()
    return model(paddle.to_tensor(np.load(os.path.join(FIXTURES, 'pit_micro.npz'))['input'])).numpy()


@pytest.mark.parametrize('source', MICRO_SOURCES)
def test_every_source_layout_converts_to_the_reference_logits(tmp_path, source):
    dst = tmp_path / 'out'
    convert_weights(build_config(MICRO_CFG), os.path.join(FIXTURES, source), str(dst))
    assert sorted(os.listdir(tmp_path)) == ['out.pdparams']
    reference = np.load(os.path.join(FIXTURES, 'pit_micro.npz'))['logits']
    np.testing.assert_allclose(logits_of(str(dst) + '.pdparams'), reference, atol=1e-5)


def test_ema_flag_converts_the_ema_weights(tmp_path):
    dst = str(tmp_path / 'ema.pdparams')
    src = os.path.join(FIXTURES, 'pit_micro_deit.pth')
    convert_weights(build_config(MICRO_CFG), src, dst, prefer_ema=True)
    reference = np.load(os.path.join(FIXTURES, 'pit_micro.npz'))['logits_ema']
    np.testing.assert_allclose(logits_of(dst), reference, atol=1e-5)


def test_conversion_prints_one_summary_line_and_imports_no_torch(tmp_path):
    src = os.path.join(FIXTURES, 'pit_micro_timm.pth')
    result = run_cli('-cfg', MICRO_CFG, '-src', src, '-dst', str(tmp_path / 'x'))
    assert result.returncode == 0 and 'torch' not in sys.modules
    assert result.stdout.count('\n') == 1 and 'timm>=0.9 layout' in result.stdout and 'x.pdparams' in result.stdout


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_weights.py'), *args],
                          capture_output=True, text=True, cwd=ROOT)


def error_lines(stderr):
    """stderr lines that are not warnings printed by Paddle at import."""
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def test_wrong_variant_fails_with_one_line_exit_2_and_no_output(tmp_path):
    result = run_cli('-cfg', MICRO_CFG, '-src', os.path.join(FIXTURES, 'pit_tiny.pth'),
                     '-dst', str(tmp_path / 'out'))
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and 'pit_tiny.pth' in lines[0] and 'mis-shaped' in lines[0]
    assert os.listdir(tmp_path) == []


def test_truncated_source_fails_with_exit_2_and_no_output(tmp_path):
    data = open(os.path.join(FIXTURES, 'pit_micro_timm.pth'), 'rb').read()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    result = run_cli('-cfg', MICRO_CFG, '-src', str(tmp_path / 'cut.pth'), '-dst', str(tmp_path / 'out.pdparams'))
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1
    assert sorted(os.listdir(tmp_path)) == ['cut.pth']


def test_failed_save_keeps_an_existing_output_and_leaves_no_temp_file(tmp_path, monkeypatch):
    dst = tmp_path / 'out.pdparams'
    dst.write_bytes(b'previous')

    def disk_full(fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(CheckpointWriteError, match='No space left on device'):  # the run failed: exit status 1
        convert_weights(build_config(MICRO_CFG), os.path.join(FIXTURES, 'pit_micro_timm.pth'), str(dst))
    assert dst.read_bytes() == b'previous' and os.listdir(tmp_path) == ['out.pdparams']


def test_converted_weights_describe_their_model_and_imagenet_classes(tmp_path):
    from weights import read_paddle_file
    convert_weights(build_config(MICRO_CFG), os.path.join(FIXTURES, 'pit_micro_timm.pth'), str(tmp_path / 'x'))
    saved = read_paddle_file(str(tmp_path / 'x.pdparams'))
    config = build_config(MICRO_CFG)
    assert described_keys(saved)['MODEL.TRANS.BASE_DIMS'] == list(config.MODEL.TRANS.BASE_DIMS)
    assert described_keys(saved)['DATA.CROP_PCT'] == config.DATA.CROP_PCT
    assert saved['classes'] is None  # a 5-class model: no ImageNet names to attach
