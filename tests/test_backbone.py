"""PiT as a backbone: stage maps at any input size, feature_info, a new classifier, training a head on the maps."""
import os

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from config import build_config
from pit import PiTFeatures, PoolingTransformer, build_pit, resize_pos_embed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variant(name, features_only=True):
    paddle.seed(0)
    model = build_pit(build_config(os.path.join(ROOT, 'configs', name + '.yaml')), features_only=features_only)
    model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
    return model


def map_shapes(model, height, width):
    with paddle.no_grad():
        return [list(m.shape) for m in model(paddle.randn([2, 3, height, width]))]


@pytest.mark.parametrize('name, size, shapes', [
    ('pit_ti', (224, 224), [[2, 64, 27, 27], [2, 128, 14, 14], [2, 256, 7, 7]]),
    ('pit_b', (224, 224), [[2, 256, 31, 31], [2, 512, 16, 16], [2, 1024, 8, 8]]),
    # non-square: the patch grid is floor((side - patch) / stride) + 1, then ceil-halved by each pooling
    ('pit_ti', (320, 256), [[2, 64, 39, 31], [2, 128, 20, 16], [2, 256, 10, 8]]),
    ('pit_b', (400, 288), [[2, 256, 56, 40], [2, 512, 28, 20], [2, 1024, 14, 10]]),
])
def test_features_only_gives_the_three_stage_maps_at_any_input_size(name, size, shapes):
    assert map_shapes(variant(name), *size) == shapes


@pytest.mark.parametrize('name, channels, reduction, stride', [
    ('pit_ti', [64, 128, 256], [7, 14, 28], [8, 16, 32]),
    ('pit_s', [144, 288, 576], [7, 14, 28], [8, 16, 32]),
    ('pit_b', [256, 512, 1024], [6, 12, 24], [7, 14, 28]),
])
def test_feature_info_declares_channels_timm_reductions_and_the_true_cell_step(name, channels, reduction, stride):
    """`reduction` is what timm declares for PiT ((stride - 1) * 2**s); `stride` is the step between map cells
    in input pixels (patch stride * 2**s)."""
    info = variant(name).feature_info
    assert info.channels() == channels and info.reduction() == reduction
    assert [i['stride'] for i in info] == stride
    assert info.module_name() == ['transformers.0', 'transformers.1', 'transformers.2']
    assert variant(name, features_only=False).feature_info == info


def tiny(**kw):
    args = dict(image_size=32, patch_size=4, stride=2, base_dims=[8, 8, 8], depth=[1, 1, 1], heads=[2, 4, 8],
                num_classes=5)
    args.update(kw)
    paddle.seed(0)
    model = PoolingTransformer(**args)
    model.eval()
    return model


@pytest.mark.parametrize('distilled', [False, True])
def test_features_model_shares_the_classifier_trunk_and_its_parameter_names(distilled):
    model = tiny(distilled=distilled)
    features = PiTFeatures(model)
    names = set(model.state_dict()) - set(features.state_dict())
    assert names == ({'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
                     | ({'head_dist.weight', 'head_dist.bias'} if distilled else set()))
    assert features.pos_embed is model.pos_embed and features.no_weight_decay() == {'pos_embed', 'cls_token'}
    x = paddle.randn([2, 3, 32, 32])
    maps, tokens = model.forward_stages(x)
    for got, want in zip(features(x), maps):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_allclose(model.head(model.norm(tokens)[:, 0]).numpy(),
                               model.head(model.forward_features(x)[:, 0]).numpy(), rtol=1e-6)


def test_pos_embed_is_resized_on_the_fly_as_a_model_built_for_that_size_loads_it():
    """Running at 48 px the model built for 32 px equals a 48 px model given the loader's bicubic resize."""
    small, large = tiny(), tiny(image_size=48)
    state = small.state_dict()
    state['pos_embed'] = resize_pos_embed(small.pos_embed, large.pos_embed.shape[2:])
    large.set_state_dict(state)
    x = paddle.randn([1, 3, 48, 48])
    for got, want in zip(PiTFeatures(small)(x), PiTFeatures(large)(x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('distilled', [False, True])
def test_reset_classifier_gives_new_heads_of_the_new_size_and_keeps_the_trunk(distilled):
    model = tiny(distilled=distilled)
    trunk = {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith('head')}
    model.reset_classifier(7)
    assert model.num_classes == 7 and list(model.head.weight.shape) == [64, 7]
    if distilled:
        assert list(model.head_dist.weight.shape) == [64, 7]
    assert list(model(paddle.randn([2, 3, 32, 32])).shape) == [2, 7]
    for k, v in model.state_dict().items():
        if k in trunk:
            np.testing.assert_array_equal(v.numpy(), trunk[k])
    model.reset_classifier(0)
    assert list(model(paddle.randn([2, 3, 32, 32])).shape) == [2, 64]


class TwoLevelHead(nn.Layer):
    """FPN-style: 1x1 laterals on the last two stage maps, the top one upsampled and added, a per-cell score."""

    def __init__(self, channels, width=16):
        super().__init__()
        self.lateral = nn.LayerList([nn.Conv2D(c, width, 1) for c in channels])
        self.score = nn.Conv2D(width, 1, 3, padding=1)

    def forward(self, maps):
        low, high = (lateral(m) for lateral, m in zip(self.lateral, maps))
        return self.score(low + F.interpolate(high, size=low.shape[2:], mode='nearest'))


def test_a_two_level_head_trains_on_the_stage_maps_of_a_non_square_input():
    """A bright square's cells, at the resolution of stage 1, are learnt from the maps of stages 1 and 2; the
    loss falls and the backbone (pos_embed included, resized every step) gets gradients."""
    paddle.seed(0)
    backbone = PiTFeatures(tiny(image_size=32))
    head = TwoLevelHead(backbone.feature_info.channels()[1:])
    backbone.train()
    params = backbone.parameters() + head.parameters()
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=params, weight_decay=0.0)
    rng = np.random.RandomState(0)
    losses = []
    for _ in range(30):
        images = rng.rand(8, 3, 40, 56).astype('float32') * 0.2
        target = np.zeros([8, 1, 40, 56], 'float32')
        for i in range(8):
            top, left = rng.randint(0, 24), rng.randint(0, 40)
            images[i, :, top:top + 16, left:left + 16] += 0.8
            target[i, :, top:top + 16, left:left + 16] = 1
        maps = backbone(paddle.to_tensor(images))
        logits = head(maps[1:])
        cells = F.adaptive_avg_pool2d(paddle.to_tensor(target), logits.shape[2:])
        loss = F.binary_cross_entropy_with_logits(logits, cells)
        loss.backward()
        assert backbone.pos_embed.grad is not None and float(backbone.pos_embed.grad.abs().sum()) > 0
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_weights_load_into_the_features_model_directly_with_only_the_classifier_left_over(tmp_path):
    """load_pretrained on PiTFeatures maps keys as for the classifier (pos_embed resized to its grid); only the
    final norm and head of the file are left over."""
    from weights import load_pretrained
    paddle.save(tiny().state_dict(), str(tmp_path / 'tiny.pdparams'))
    report = load_pretrained(PiTFeatures(tiny(image_size=48)), str(tmp_path / 'tiny'), strict=False)
    assert report.fit.resized == ((15, 15), (23, 23))
    assert sorted(report.fit.unexpected) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    assert not report.fit.missing and not report.fit.mismatched
