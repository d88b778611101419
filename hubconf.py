"""paddle.hub entry points: one per variant config (configs/pit_*.yaml), e.g.

    model = paddle.hub.load('path/to/paddle-pit', 'pit_ti', source='local', pretrained='output/pit_ti_730')
    backbone = paddle.hub.load('path/to/paddle-pit', 'pit_b', source='local', features_only=True)
    paddle.hub.list('path/to/paddle-pit', source='local')     # the 8 variant names

Each entry builds the variant its config describes and, given `pretrained=PATH`, loads a weights file as
`-pretrained` does (converted .pdparams, a checkpoint of this repo, or the official .pth/.safetensors read
directly). Nothing is ever downloaded: fetch the official files yourself (README, "Official weights").
"""
import glob
import importlib
import os
import sys

dependencies = ['paddle', 'numpy', 'yaml', 'yacs']

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _import_from_repo(names):
    """This repo's modules by name. paddle.hub takes the repo off sys.path once hubconf is imported, and a
    caller may already hold same-named modules of its own (`config`, `utils`): those are set aside while ours
    are imported, then put back, so each side keeps its own."""
    own = {os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(_ROOT, '*.py'))}
    foreign = {name: module for name, module in sys.modules.items()
               if name in own and os.path.dirname(os.path.realpath(getattr(module, '__file__', None) or ''))
               != os.path.realpath(_ROOT)}
    for name in foreign:
        del sys.modules[name]
    sys.path.insert(0, _ROOT)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(_ROOT)
        sys.modules.update(foreign)


_config, _pit, _weights = _import_from_repo(['config', 'pit', 'weights'])


def _build(cfg_file, pretrained=None, num_classes=None, features_only=False, opts=()):
    """The variant of cfg_file (with `-opts`-style overrides), its weights from pretrained (a path) if given;
    num_classes replaces the classifier; features_only returns the backbone (pit.PiTFeatures)."""
    if pretrained is True:
        raise ValueError('this hub never downloads weights: pass pretrained=PATH to a converted or official '
                         'weights file (README, "Official weights")')
    config = _config.merge_opts(_config.get_config(cfg_file), list(opts))
    if num_classes is not None:
        config.MODEL.NUM_CLASSES = int(num_classes)
    model = _pit.build_pit(config)
    if pretrained:
        # a classifier of another size (or none, for a backbone) is new: the file's heads are left out
        _load_weights(model, pretrained, new_classifier=features_only or num_classes is not None)
    return _pit.PiTFeatures(model) if features_only else model


_CLASSIFIER_KEYS = ('head.', 'head_dist.')


def _load_weights(model, path, new_classifier):
    """Load path into model; with new_classifier, heads whose shape differs from the model's keep their init.
    Anything else that does not fit raises WeightsError naming the file."""
    report = _weights.load_pretrained(model, path, strict=not new_classifier)
    fit = report.fit
    others = fit.missing + fit.unexpected + [name for name, _, _ in fit.mismatched]
    if any(not name.startswith(_CLASSIFIER_KEYS) for name in others):
        raise _weights.WeightsError(f"'{report.path}': weights do not fit the model: {fit.problems()}")
    return report


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
