"""What -eval reports (eval.json, -eval_save_logits) and on which sets (DATA.EVAL_SET), through the CLI: the same in
one and two processes, and accuracies that equal a hand computation from the saved logits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from checkpoint import write_weights
from config import ConfigError, build_config
from inference import read_imagenet_index
from pit import build_model
from utils import seed_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

TINY = ['DATA.IMAGE_SIZE', '16', 'DATA.CROP_PCT', '1.0', 'DATA.BATCH_SIZE', '4', 'MODEL.TRANS.PATCH_SIZE', '4',
        'MODEL.TRANS.STRIDE', '2', 'MODEL.TRANS.BASE_DIMS', '[4, 4, 4]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]',
        'MODEL.TRANS.HEADS', '[1, 2, 2]']
RUN = ['DATA.BATCH_SIZE', '4', 'DATA.NUM_WORKERS', '0', 'CPU_THREADS', '1']  # several batches per process


def tiny_weights(path, num_classes):
    """A randomly initialised tiny PiT of num_classes classes written as self-describing weights."""
    config = build_config(opts=TINY + ['MODEL.NUM_CLASSES', str(num_classes)])
    seed_everything(3)
    return write_weights(build_model(config), config, str(path))


def write_images(folder, names, seed):
    """Random-pixel PNGs named names (without extension) in folder; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = [os.path.join(folder, name + '.png') for name in names]
    for path in paths:
        Image.fromarray(rng.randint(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return paths


def evaluate(weights, data, save, *opts, processes=1):
    script = ['main_single_gpu.py'] if processes == 1 else ['main_multi_gpu.py', '-ngpus', str(processes)]
    result = subprocess.run([sys.executable, *script, '-eval', '-eval_save_logits', '-pretrained', weights,
                             '-data_path', data, '-save_path', save, '-device', 'cpu', '-opts', *RUN, *opts],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(os.path.join(save, 'eval.json')) as f:
        report = json.load(f)
    return report, np.load(os.path.join(save, 'eval_logits.npy')), np.load(os.path.join(save, 'eval_labels.npy'))


@pytest.fixture(scope='module')
def ten_classes(tmp_path_factory):
    """A 10-class tiny model's weights and a val folder of 10 classes, 23 images (2 processes: 12 and 11)."""
    root = tmp_path_factory.mktemp('ten')
    for c in range(10):
        write_images(str(root / 'data' / 'val' / f'c{c}'), [f'img{c}_{i}' for i in range(3 if c < 3 else 2)], c)
    return str(tiny_weights(root / 'weights', 10)), str(root / 'data')


def test_eval_json_and_logits_are_the_same_in_one_and_two_processes(ten_classes, tmp_path):
    weights, data = ten_classes
    one, logits1, labels1 = evaluate(weights, data, str(tmp_path / 'one'))
    two, logits2, labels2 = evaluate(weights, data, str(tmp_path / 'two'), processes=2)
    assert logits1.dtype == np.float32 and logits1.shape == (23, 10) and labels1.dtype == np.int64
    assert labels1.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + sum(([c] * 2 for c in range(3, 10)), [])
    np.testing.assert_array_equal(labels1, labels2)
    np.testing.assert_allclose(logits1, logits2, rtol=1e-5, atol=1e-6)
    assert one.pop('loss') == pytest.approx(two.pop('loss'), rel=1e-5)
    assert one == two
    predicted = logits1.argmax(1)
    assert one['images'] == 23 and one['acc1'] == pytest.approx(np.mean(predicted == labels1))
    assert one['per_class'] == {f'c{c}': {'images': int(np.sum(labels1 == c)),
                                          'acc1': float(np.mean(predicted[labels1 == c] == c))} for c in range(10)}
    wrong = [(f'c{t}', f'c{p}') for t, p in zip(labels1, predicted) if t != p]
    assert sorted((c['true'], c['predicted'], c['count']) for c in one['confusions']) == \
        sorted((t, p, wrong.count((t, p))) for t, p in set(wrong))
    assert [c['count'] for c in one['confusions']] == sorted((c['count'] for c in one['confusions']), reverse=True)
    assert one['preprocess'] == {'resize_short': 16, 'crop': 16, 'crop_pct': 1.0, 'interpolation': 'bicubic',
                                 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
    assert one['eval_set'] == 'imagenet'


def test_an_undecodable_image_skipped_is_a_minus_1_label_and_a_nan_row_in_two_processes(ten_classes, tmp_path):
    weights, data = ten_classes
    subprocess.run(['cp', '-r', data, str(tmp_path / 'data')], check=True)
    (tmp_path / 'data' / 'val' / 'c1' / 'broken.png').write_bytes(b'not an image')  # first of c1: image 3
    report, logits, labels = evaluate(weights, str(tmp_path / 'data'), str(tmp_path / 'out'),
                                      'DATA.SKIP_BAD_EVAL_IMAGES', 'True', processes=2)
    assert labels.tolist()[3:7] == [-1, 1, 1, 1]
    assert np.isnan(logits[3]).all() and not np.isnan(np.delete(logits, 3, 0)).any()
    assert report['images'] == 23 and report['per_class']['c1']['images'] == 3


def test_real_accuracy_counts_a_prediction_in_the_label_set_and_skips_empty_sets(ten_classes, tmp_path):
    weights, _ = ten_classes
    # val images named as ImageNet's, numbered across the class folders: sorted name order != dataset order
    numbers = {0: [5, 1, 7], 1: [2, 8, 3], 2: [6, 4]}
    for c, found in numbers.items():
        write_images(str(tmp_path / 'val' / f'c{c}'), [f'ILSVRC2012_val_{n:08d}' for n in found], c)
    for c in range(3, 10):
        os.makedirs(tmp_path / 'val' / f'c{c}')
    plain, logits, labels = evaluate(weights, str(tmp_path), str(tmp_path / 'plain'), 'MODEL.NUM_CLASSES', '10')
    predicted = dict(zip(sum(numbers.values(), []), logits.argmax(1).tolist()))  # file number -> prediction
    label_of = {n: c for c, found in numbers.items() for n in found}
    # per file number 1..8: the prediction, the true label only, empty (skipped), the label and the prediction
    sets = {1: [predicted[1]], 2: [label_of[2]], 3: [], 4: [predicted[4], label_of[4]], 5: [(predicted[5] + 1) % 10],
            6: [], 7: [predicted[7]], 8: [label_of[8]]}
    (tmp_path / 'real.json').write_text(json.dumps([sets[n] for n in range(1, 9)]))
    real, _, _ = evaluate(weights, str(tmp_path), str(tmp_path / 'real'), 'MODEL.NUM_CLASSES', '10',
                          'DATA.EVAL_SET', 'real', 'DATA.REAL_LABELS', str(tmp_path / 'real.json'))
    scored = [n for n in sets if sets[n]]
    assert real['images_real'] == 6
    assert real['acc1_real'] == pytest.approx(np.mean([predicted[n] in sets[n] for n in scored]))
    assert real['acc1'] == plain['acc1'] and real['images'] == 8


def test_v2_folders_are_class_indices_in_numeric_order(tmp_path):
    weights = tiny_weights(tmp_path / 'weights', 12)
    for c in (0, 2, 10, 11):  # lexically 0, 10, 11, 2
        write_images(str(tmp_path / 'v2' / str(c)), [f'{c}_{i}' for i in range(2)], c)
    report, logits, labels = evaluate(weights, str(tmp_path / 'v2'), str(tmp_path / 'out'), 'DATA.EVAL_SET', 'v2')
    assert labels.tolist() == [0, 0, 2, 2, 10, 10, 11, 11]
    assert report['acc1'] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert set(report['per_class']) == {'0', '2', '10', '11'}


@pytest.mark.parametrize('eval_set', ['a', 'r'])
def test_a_and_r_mask_logits_to_their_classes_and_label_by_the_1000_class_order(tmp_path, eval_set):
    weights = tiny_weights(tmp_path / 'weights', 1000)
    wnids = [wnid for wnid, _ in read_imagenet_index()]
    subset = [999, 1, 500]
    for k, index in enumerate(subset):
        write_images(str(tmp_path / eval_set / wnids[index]), [f'{k}_{i}' for i in range(3)], k)
    report, logits, labels = evaluate(weights, str(tmp_path / eval_set), str(tmp_path / 'out'),
                                      'DATA.EVAL_SET', eval_set)
    assert labels.tolist() == [1] * 3 + [500] * 3 + [999] * 3
    masked = np.full_like(logits, -np.inf)
    masked[:, subset] = logits[:, subset]
    assert report['acc1'] == pytest.approx(np.mean(masked.argmax(1) == labels))
    assert not np.array_equal(masked.argmax(1), logits.argmax(1))  # the mask changed the predictions
    assert set(report['per_class']) == {wnids[i] for i in subset}
    assert all(c['predicted'] in report['per_class'] for c in report['confusions'])


@pytest.mark.parametrize('opts, message', [
    (['DATA.EVAL_SET', 'sketch'], "DATA.EVAL_SET='sketch' is not one of"),
    (['DATA.EVAL_SET', 'real'], "DATA.REAL_LABELS=None must name ReaL's real.json"),
    (['DATA.EVAL_SET', 'real', 'DATA.REAL_LABELS', 'no/real.json'], "DATA.REAL_LABELS='no/real.json' is not a file"),
    (['DATA.REAL_LABELS', 'real.json'], "is read only with DATA.EVAL_SET 'real'"),
    (['DATA.EVAL_SET', 'a', 'MODEL.NUM_CLASSES', '10'], "MODEL.NUM_CLASSES=10 must be 1000 with DATA.EVAL_SET 'a'"),
])
def test_eval_set_keys_are_checked_naming_the_key(opts, message):
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace('[', r'\[')):
        build_config(opts=['EVAL', 'True'] + opts)


def test_eval_only_keys_refuse_a_training_run():
    with pytest.raises(ConfigError, match="DATA.EVAL_SET='v2' is for -eval"):
        build_config(opts=['DATA.EVAL_SET', 'v2'])
    with pytest.raises(ConfigError, match='EVAL_SAVE_LOGITS=True is for -eval'):
        build_config(opts=['EVAL_SAVE_LOGITS', 'True'])


def failed_eval(weights, data, save, *opts):
    """The one 'error:' line (the last on stderr, no traceback) of an -eval that must exit 2; nothing written."""
    result = subprocess.run([sys.executable, 'main_single_gpu.py', '-eval', '-pretrained', weights, '-data_path', data,
                             '-save_path', save, '-device', 'cpu', '-opts', *RUN, *opts],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert sum(line.startswith('error:') for line in lines) == 1 and not os.path.exists(os.path.join(save, 'eval.json'))
    return lines[-1]


def test_a_folder_that_is_not_a_wnid_is_one_line_exit_2(tmp_path):
    weights = tiny_weights(tmp_path / 'weights', 1000)
    write_images(str(tmp_path / 'a' / 'n01440764'), ['x'], 0)
    write_images(str(tmp_path / 'a' / 'goldfish'), ['y'], 1)
    assert failed_eval(weights, str(tmp_path / 'a'), str(tmp_path / 'out'), 'DATA.EVAL_SET', 'a') == (
        f"error: folder '{tmp_path / 'a' / 'goldfish'}' is not an ImageNet-1k wnid (n01440764 ...) "
        '(DATA.EVAL_SET a: ImageNet-A class folders under DATA.DATA_PATH)')


def test_real_labels_of_another_count_are_one_line_exit_2(ten_classes, tmp_path):
    weights, data = ten_classes
    (tmp_path / 'real.json').write_text('[[1], [2]]')
    assert failed_eval(weights, data, str(tmp_path / 'out'), 'DATA.EVAL_SET', 'real', 'DATA.REAL_LABELS',
                       str(tmp_path / 'real.json')) == (
        f"error: ReaL labels '{tmp_path / 'real.json'}' hold 2 entries but the val split has 23 images "
        '(one entry per val image, in sorted file name order)')


def test_weights_of_other_classes_than_the_val_folders_are_one_line_exit_2(tmp_path):
    """Output k is scored as the val set's class k: weights trained on folders b, a, c (in a list layout's order)
    evaluated on folders a, b, c would score every 'a' as wrong without an error."""
    config = build_config(opts=TINY + ['MODEL.NUM_CLASSES', '3'])
    weights = write_weights(build_model(config), config, str(tmp_path / 'weights'), classes=['b', 'a', 'c'])
    for name in 'abc':
        write_images(str(tmp_path / 'data' / 'val' / name), ['x'], 0)
    assert failed_eval(weights, str(tmp_path / 'data'), str(tmp_path / 'out'), 'MODEL.NUM_CLASSES', '3') == (
        f"error: '{weights}' was trained on other classes than the evaluated set's: the same classes in another "
        "order (label 0 is 'b' in the weights file, 'a' in the evaluated set)")
