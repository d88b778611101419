"""tools/benchmark.py runs every phase on a tiny config (with -opts overrides) and writes its figures as JSON."""
import json
import os
import subprocess
import sys

import pytest

from inference import CPU_PRECISION_FLAGS, cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path):
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(f"BASE: ['{os.path.join(ROOT, 'configs', 'pit_ti.yaml')}']\nDATA:\n  IMAGE_SIZE: 32\n"
                   'MODEL:\n  NAME: tiny\n  TRANS:\n    PATCH_SIZE: 4\n    STRIDE: 2\n    BASE_DIMS: [8, 8, 8]\n'
                   '    DEPTH: [1, 1, 1]\n')
    return cfg


@pytest.mark.slow
def test_benchmark_prints_and_writes_all_phases(tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / 'bench.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '-cfg', str(cfg),
                             '-batch_size', '4', '-repeats', '1', '-json', str(out), '-markdown', '-no_reference',
                             '-threads', '1', '-rounds', '2', '-opts', 'MODEL.NUM_CLASSES', '7'],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    timed = {'dygraph_infer', 'exported_infer', 'train_step', 'latency_b1', 'data_per_worker', 'data_vs_prefetcher',
             'data_decode'}
    assert set(figures['ours']) == timed | {'data_breakdown', 'step_launches'}
    assert all(figures['ours'][p]['img_per_s'] > 0 and figures['ours'][p]['peak_mb'] > 0 for p in timed)
    assert all(len(figures['ours'][p]['rounds']) == 2 for p in timed)  # -rounds: processes per phase
    # samples cross from the workers as uint8 pixels (32 x 32 x 3 bytes and a small header), not float32
    assert 32 * 32 * 3 <= figures['ours']['data_per_worker']['bytes_per_sample'] < 32 * 32 * 3 * 2
    launches = figures['ours']['step_launches']
    assert launches['ops_per_optimizer_step'] > 0 and set(launches['host_reads_per_step_between_reports']) == {0}
    assert all(ms > 0 for ms in figures['ours']['data_breakdown']['ms_per_image'].values())
    assert figures['params'] > 0 and '| train_step |' in result.stdout and '1 threads' in result.stdout
    assert figures['threads'] == 1 and all(figures['ours'][p]['threads'] == 1 for p in timed)
    # the training step runs the config's optimizer (the reference is asked for the same one)
    assert figures['optimizer'] == 'AdamP' and 'training step with AdamP' in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not all(set(flags) & cpu_flags() for flags in CPU_PRECISION_FLAGS.values()),
                    reason='this CPU lacks bf16 or VNNI instructions')
def test_benchmark_times_the_export_at_bf16_and_int8_beside_fp32(tmp_path):
    out = tmp_path / 'bench.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '-cfg',
                             str(tiny_config(tmp_path)), '-batch_size', '4', '-repeats', '1', '-json', str(out),
                             '-markdown', '-no_reference', '-threads', '1', '-phases', 'exported_infer',
                             'exported_infer_bf16', 'exported_infer_int8'],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0 and 'failed' not in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    ours = json.loads(out.read_text())['ours']
    assert all(ours[p]['img_per_s'] > 0 for p in ('exported_infer', 'exported_infer_bf16', 'exported_infer_int8'))
    assert '| exported_infer_int8 |' in result.stdout and '| exported_infer_bf16 |' in result.stdout
    assert '| train_step |' not in result.stdout  # the table has the phases asked for
