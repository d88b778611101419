"""The supported Paddle versions (compat.py): what passes, what is refused at start and how."""
import os
import subprocess
import sys

import paddle
import pytest

from compat import parse_version, unsupported_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('text, version', [('3.3.1', (3, 3, 1)), ('2.6.2', (2, 6, 2)), ('3.0.0rc1', (3, 0, 0)),
                                           ('3.1.0.post118', (3, 1, 0)), ('2.6', (2, 6, 0)), ('0.0.0', None)])
def test_release_numbers_are_read_from_paddle_version_strings(text, version):
    assert parse_version(text) == version


@pytest.mark.parametrize('text', ['2.6.0', '2.6.2', '3.0.0', '3.3.1', '3.9.0', '0.0.0'])
def test_paddle_2_6_3_x_and_development_builds_are_supported(text):
    assert unsupported_reason(text) is None


@pytest.mark.parametrize('text', ['2.5.2', '2.4.0', '1.8.5', '4.0.0'])
def test_older_and_unknown_major_releases_are_refused_naming_both_versions(text):
    reason = unsupported_reason(text)
    assert f'paddle {text} is not supported' in reason and 'Paddle 2.6 or 3.x' in reason


def test_the_installed_paddle_is_reported_in_one_line():
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'compat.py')], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == f'paddle {paddle.__version__}: supported (Paddle 2.6 or 3.x)'
