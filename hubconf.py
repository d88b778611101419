"""paddle.hub entry points: one per variant config (configs/pit_*.yaml), e.g.

    model = paddle.hub.load('path/to/paddle-pit', 'pit_ti', source='local', pretrained='output/pit_ti_730')
    backbone = paddle.hub.load('path/to/paddle-pit', 'pit_b', source='local', features_only=True)
    paddle.hub.list('path/to/paddle-pit', source='local')     # the 8 variant names

Each entry builds the variant its config describes and, given `pretrained=PATH`, loads a weights file as
`-pretrained` does (converted .pdparams, a checkpoint of this repo, or the official .pth/.safetensors read
directly). Nothing is ever downloaded: fetch the official files yourself (README, "Official weights").
"""
import contextlib
import glob
import importlib
import os
import sys

dependencies = ['paddle', 'numpy', 'yaml', 'yacs', 'PIL']

_ROOT = os.path.dirname(os.path.abspath(__file__))
_OWN_NAMES = {os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(_ROOT, '*.py'))}
_OURS = {}  # this repo's modules, kept here while a caller's same-named ones are back in sys.modules


def _is_ours(module):
    path = getattr(module, '__file__', None)
    return bool(path) and os.path.dirname(os.path.realpath(path)) == os.path.realpath(_ROOT)


@contextlib.contextmanager
def _repo_modules():
    """Imports inside resolve to this repo's modules. paddle.hub takes the repo off sys.path once hubconf is
    imported, and a caller may hold same-named modules of its own (`config`, `utils`): those are set aside
    inside and put back after, so each side keeps its own (our modules also import lazily, e.g. `augment`)."""
    theirs = {name: m for name, m in sys.modules.items() if name in _OWN_NAMES and not _is_ours(m)}
    for name in theirs:
        del sys.modules[name]
    sys.modules.update(_OURS)
    sys.path.insert(0, _ROOT)
    try:
        yield
    finally:
        sys.path.remove(_ROOT)
        _OURS.update({name: m for name, m in sys.modules.items() if name in _OWN_NAMES and _is_ours(m)})
        sys.modules.update(theirs)


with _repo_modules():
    _config, _pit, _weights = (importlib.import_module(name) for name in ('config', 'pit', 'weights'))


def _build(cfg_file, pretrained=None, num_classes=None, features_only=False, opts=()):
    """The variant of cfg_file (with `-opts`-style overrides), its weights from pretrained (a path) if given;
    num_classes replaces the classifier; features_only returns the backbone (pit.PiTFeatures)."""
    if pretrained is True:
        raise ValueError('this hub never downloads weights: pass pretrained=PATH to a converted or official '
                         'weights file (README, "Official weights")')
    opts = list(opts) + (['MODEL.NUM_CLASSES', str(int(num_classes))] if num_classes is not None else [])
    with _repo_modules():
        model = _pit.build_pit(_config.build_config(cfg_file, opts))
        if pretrained:
            # a classifier of another size (or none, for a backbone) is new: the file's heads keep their init;
            # everything else must fit, else WeightsError names the file
            _weights.load_pretrained(model, pretrained, finetune=features_only or num_classes is not None)
    return _pit.PiTFeatures(model) if features_only else model


def _entry(cfg_file):
    name = os.path.splitext(os.path.basename(cfg_file))[0]

    def entry(pretrained=None, num_classes=None, features_only=False, opts=()):
        return _build(cfg_file, pretrained, num_classes, features_only, opts)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"""{name} as configs/{name}.yaml describes it.

    Args:
        pretrained: path of a weights file to load (.pdparams optional; naver-ai/timm .pth or .safetensors
            are read directly); None: random init. Never downloads.
        num_classes: classifier outputs (default: the config's 1000); when it differs from the file's, the
            file's heads are left out and the new ones keep their init (fine-tuning).
        features_only: return pit.PiTFeatures: forward(images) gives the three stage maps [B, C_s, H_s, W_s]
            at any input size; `feature_info` declares channels and reductions. num_classes is then unused.
        opts: config overrides as -opts takes them, e.g. ['DATA.IMAGE_SIZE', '384', 'MODEL.DROP_PATH', '0.1'].
    """
    return name, entry


globals().update(_entry(f) for f in sorted(glob.glob(os.path.join(_ROOT, 'configs', 'pit_*.yaml'))))
