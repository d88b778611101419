"""configure_cpu, the one-call CPU set-up of a process (cpu_kernels): threads, MKL path, transposes, malloc."""
import json
import os
import subprocess
import sys

import pytest

from cpu_kernels import cpu_info, cpu_vendor, keep_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r'''
import json, os, sys
import paddle
import cpu_kernels
cpu_kernels.cpu_vendor = lambda: sys.argv[1]
threads = cpu_kernels.configure_cpu(int(sys.argv[2]), kernels=False)
print(json.dumps({'threads': threads, 'omp': os.environ.get('OMP_NUM_THREADS'),
                  'mkl': os.environ.get('MKL_DEBUG_CPU_TYPE'),
                  'stride': paddle.get_flags(['FLAGS_use_stride_kernel'])['FLAGS_use_stride_kernel']}))
'''


def configure_in_subprocess(vendor, threads, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != 'MKL_DEBUG_CPU_TYPE'}
    env.update(env_extra or {})
    env['PYTHONPATH'] = ROOT
    out = subprocess.run([sys.executable, '-c', PROBE, vendor, str(threads)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_vendor_reads_the_first_vendor_id(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n'
                    'processor\t: 1\nvendor_id\t: AuthenticAMD\n')
    assert cpu_vendor(str(info)) == 'AuthenticAMD'
    assert cpu_info('model name', str(info)) == 'AMD EPYC' and cpu_info('flags', str(info)) == 'fpu avx2'
    assert cpu_vendor(str(tmp_path / 'missing')) == ''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning is linux-only')
def test_keep_freed_memory_is_accepted_by_glibc():
    assert keep_freed_memory() is True


def test_configure_cpu_sets_threads_mkl_on_amd_only_and_plain_transposes():
    amd = configure_in_subprocess('AuthenticAMD', 3)
    assert amd == {'threads': 3, 'omp': '3', 'mkl': '5', 'stride': False}
    intel = configure_in_subprocess('GenuineIntel', 1)
    assert intel == {'threads': 1, 'omp': '1', 'mkl': None, 'stride': False}
    # A user's own MKL setting wins.
    assert configure_in_subprocess('AuthenticAMD', 1, {'MKL_DEBUG_CPU_TYPE': '2'})['mkl'] == '2'
