"""hubconf.py through paddle.hub: the 8 variants, weights files, num_classes, features_only, never downloading."""
import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from pit import PiTFeatures, PoolingTransformer
from weights import WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = sorted(os.path.basename(f)[:-5] for f in glob.glob(os.path.join(ROOT, 'configs', 'pit_*.yaml')))


def hub_load(name, **kwargs):
    paddle.seed(0)
    model = paddle.hub.load(ROOT, name, source='local', **kwargs)
    model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
    return model


def test_hub_lists_exactly_the_eight_variant_configs():
    assert paddle.hub.list(ROOT, source='local') == VARIANTS and len(VARIANTS) == 8


@pytest.mark.parametrize('name', VARIANTS)
def test_every_hub_entry_builds_its_variant_with_a_docstring(name):
    model = hub_load(name)
    assert type(model) is PoolingTransformer and model.num_classes == 1000
    assert model.distilled == name.endswith('_distilled')
    assert 'pretrained' in paddle.hub.help(ROOT, name, source='local')


# channels and map sides at 224x224 and at 320x256, per base variant (the distilled ones give the same maps)
STAGES = {'pit_ti': (64, [27, 14, 7]), 'pit_xs': (96, [27, 14, 7]), 'pit_s': (144, [27, 14, 7]),
          'pit_b': (256, [31, 16, 8])}
NON_SQUARE = {'pit_ti': [(39, 31), (20, 16), (10, 8)], 'pit_b': [(44, 35), (22, 18), (11, 9)]}


@pytest.mark.parametrize('name', VARIANTS)
def test_every_hub_entry_gives_stage_maps_at_224_and_at_320x256_with_features_only(name):
    base = name.replace('_distilled', '')
    width, sides = STAGES[base]
    backbone = hub_load(name, features_only=True)
    with paddle.no_grad():
        square = [list(m.shape) for m in backbone(paddle.randn([1, 3, 224, 224]))]
        other = [list(m.shape) for m in backbone(paddle.randn([1, 3, 320, 256]))]
    assert square == [[1, width * 2 ** s, side, side] for s, side in enumerate(sides)]
    wide = NON_SQUARE['pit_b' if base == 'pit_b' else 'pit_ti']
    assert other == [[1, width * 2 ** s, h, w] for s, (h, w) in enumerate(wide)]
    assert backbone.feature_info.channels() == [width, 2 * width, 4 * width]


def logits(model, seed=0, size=224):
    x = paddle.to_tensor(np.random.RandomState(seed).rand(2, 3, size, size).astype('float32'))
    with paddle.no_grad():
        return model(x).numpy()


@pytest.fixture(scope='module')
def pit_ti_weights(tmp_path_factory):
    """A pit_ti saved as this repo's .pdparams and as a timm >= 0.9 .safetensors (PyTorch layout), its logits."""
    from safetensors.numpy import save_file
    tmp = tmp_path_factory.mktemp('hub')
    paddle.seed(5)
    model = PoolingTransformer()
    model.eval()
    paddle.save(model.state_dict(), str(tmp / 'pit_ti.pdparams'))
    linear = {f'{n}.weight' for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    torch_layout = {}
    for key, value in model.state_dict().items():
        value = value.numpy().T if key in linear else value.numpy()
        key = key.replace('pools.0.', 'transformers.1.pool.').replace('pools.1.', 'transformers.2.pool.')
        torch_layout[key] = np.ascontiguousarray(value)
    save_file(torch_layout, str(tmp / 'pit_ti.safetensors'))
    return tmp, logits(model)


@pytest.mark.parametrize('file', ['pit_ti.pdparams', 'pit_ti', 'pit_ti.safetensors'])
def test_pretrained_path_loads_converted_or_official_layout_weights(pit_ti_weights, file):
    tmp, reference = pit_ti_weights
    np.testing.assert_allclose(logits(hub_load('pit_ti', pretrained=str(tmp / file))), reference, atol=1e-5)


def test_num_classes_gives_a_new_classifier_over_the_pretrained_trunk(pit_ti_weights):
    tmp, _ = pit_ti_weights
    model = hub_load('pit_ti', pretrained=str(tmp / 'pit_ti.pdparams'), num_classes=10)
    reference = paddle.load(str(tmp / 'pit_ti.pdparams'))
    assert model.num_classes == 10 and logits(model).shape == (2, 10)
    np.testing.assert_array_equal(model.pos_embed.numpy(), reference['pos_embed'].numpy())
    assert list(model.head.weight.shape) == [256, 10]


def test_features_only_loads_the_trunk_and_gives_stage_maps_at_a_non_square_size(pit_ti_weights):
    tmp, _ = pit_ti_weights
    backbone = hub_load('pit_ti', pretrained=str(tmp / 'pit_ti.pdparams'), num_classes=10, features_only=True)
    assert type(backbone) is PiTFeatures and backbone.feature_info.channels() == [64, 128, 256]
    reference = paddle.load(str(tmp / 'pit_ti.pdparams'))
    for key, value in backbone.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), reference[key].numpy())
    with paddle.no_grad():
        maps = backbone(paddle.randn([1, 3, 192, 256]))
    assert [list(m.shape) for m in maps] == [[1, 64, 23, 31], [1, 128, 12, 16], [1, 256, 6, 8]]


def test_weights_of_another_variant_are_refused_naming_the_file(pit_ti_weights):
    tmp, _ = pit_ti_weights
    with pytest.raises(WeightsError, match="pit_ti.pdparams'"):
        hub_load('pit_s', pretrained=str(tmp / 'pit_ti.pdparams'), num_classes=10)


def test_pretrained_true_is_refused_because_the_hub_never_downloads():
    with pytest.raises(ValueError, match='never downloads'):
        hub_load('pit_ti', pretrained=True)


def run_python(code, cwd, env=None):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_hub_works_from_elsewhere_beside_the_callers_own_config_and_utils_modules(tmp_path):
    """paddle.hub takes the repo off sys.path after importing hubconf; a caller's same-named modules stay its own."""
    (tmp_path / 'config.py').write_text('OWNER = "caller"\n')
    (tmp_path / 'utils.py').write_text('OWNER = "caller"\n')
    result = run_python(f"""
        import sys; sys.path.insert(0, '.')
        import config, utils, paddle
        names = paddle.hub.list({ROOT!r}, source='local')
        model = paddle.hub.load({ROOT!r}, 'pit_xs_distilled', source='local', num_classes=3)
        model.eval()
        out = model(paddle.randn([1, 3, 224, 224]))
        import config as again
        print(len(names), tuple(out.shape), config.OWNER, utils.OWNER, again.OWNER, sep='|')
        """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '8|(1, 3)|caller|caller|caller', result.stdout


def test_github_source_uses_paddle_hubs_cached_copy_without_downloading(tmp_path):
    """Offline, the github path can be checked only from paddle.hub's cache (~/.cache/paddle/hub/OWNER_REPO_BRANCH),
    which is where paddle.hub.load('OWNER/REPO', ..., source='github') unpacks the repo it downloads."""
    hub_dir = tmp_path / '.cache' / 'paddle' / 'hub'
    hub_dir.mkdir(parents=True)
    os.symlink(ROOT, hub_dir / 'someone_paddle-pit_main')
    env = dict(os.environ, HOME=str(tmp_path))
    result = run_python("""
        import paddle
        print(paddle.hub.list('someone/paddle-pit', source='github'))
        print(type(paddle.hub.load('someone/paddle-pit', 'pit_ti', source='github', features_only=True)).__name__)
        """, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert 'Using cache found in' in result.stderr
    assert result.stdout.split('\n')[:2] == [str(VARIANTS), 'PiTFeatures']
