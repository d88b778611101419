"""tools/model_info.py and complexity.py: attention matmuls counted per block as their formula says, the parts add
up to the total, and the total is the paper's figure."""
import os
import re
import subprocess
import sys

import pytest

from complexity import count_macs, layer_macs, macs_by_part
from config import build_config
from pit import build_pit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pit(name):
    return build_pit(build_config(os.path.join(ROOT, 'configs', name + '.yaml')))


@pytest.mark.parametrize('name, heads', [('pit_ti', [2, 4, 8]), ('pit_s', [3, 6, 12])])
def test_each_blocks_attention_macs_are_2_heads_tokens_squared_head_dim(name, heads):
    grids = [27, 14, 7]  # 224 px, patch 16 stride 8: (224 - 16) / 8 + 1; then stride-2 poolings, padding 1
    depths, head_dim = [2, 6, 4], 48 if name == 'pit_s' else 32
    expected = [2 * h * (g * g + 1) ** 2 * head_dim for g, h, d in zip(grids, heads, depths) for _ in range(d)]
    counted = [macs for _, kind, macs in layer_macs(pit(name), 224) if kind == 'attention']
    assert counted == expected


@pytest.mark.parametrize('name, paper_gmacs', [('pit_ti', 0.7), ('pit_s', 2.9)])
def test_model_info_total_is_the_papers_and_its_parts_add_up_to_it(name, paper_gmacs):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'model_info.py'), '-cfg',
                             os.path.join(ROOT, 'configs', name + '.yaml')], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    total = float(re.search(r'params, ([\d.]+) GMACs', result.stdout).group(1))
    assert round(total, 1) == paper_gmacs
    assert 'attention matmuls q k^T and attn v included' in result.stdout
    rows = re.findall(r'^(patch embedding|stage \d|pooling \d->\d|head) +([\d.]+) +([\d.]+)', result.stdout, re.M)
    assert [row[0] for row in rows] == ['patch embedding', 'stage 1', 'pooling 1->2', 'stage 2', 'pooling 2->3',
                                        'stage 3', 'head']
    assert sum(float(row[1]) for row in rows) == pytest.approx(total, abs=0.006)
    assert float(rows[1][2]) > 0 and float(rows[0][2]) == float(rows[2][2]) == 0  # attention in stages only


def test_parts_count_every_mac_once():
    model = pit('pit_ti')
    parts = macs_by_part(model, 224)
    totals = count_macs(model, 224)
    for kind in totals:
        assert sum(counts[kind] for counts in parts.values()) == totals[kind]
    assert parts['pooling 1->2']['conv'] == 14 * 14 * 128 * 3 * 3  # depthwise: one input channel per output
