"""Datasets: both ImageNet layouts on real images, colour modes, bad files and bad lists, samplers."""
import os
import re

import numpy as np
import paddle
import pytest
from PIL import Image

from config import build_config, finalize_config, merge_opts
from datasets import (DatasetError, ExactlyOnceSampler, LoaderClock, RepeatedAugSampler, build_dataloader,
                      build_dataset, check_weights_classes, find_samples, num_workers)
from demo_data import write_dataset


def make_config(root, *opts):
    config = merge_opts(build_config(), ['DATA.DATA_PATH', str(root), 'DATA.IMAGE_SIZE', '16', 'DATA.CROP_PCT',
                                       '1.0', 'DATA.BATCH_SIZE', '8', 'DATA.NUM_WORKERS', '0',
                                       'MODEL.NUM_CLASSES', '10', *opts])
    return finalize_config(config)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    write_dataset(str(root), source='digits', image_size=16, train_per_class=6, val_per_class=3)
    return root


@pytest.fixture(scope='module')
def listed(tmp_path_factory):
    root = tmp_path_factory.mktemp('list')
    write_dataset(str(root), source='digits', layout='list', image_size=16, train_per_class=6, val_per_class=3)
    return root


def test_folder_layout_gives_sorted_classes_and_normalised_images(folder):
    dataset = build_dataset(make_config(folder), 'val')
    assert dataset.classes == [str(i) for i in range(10)] and len(dataset) == 30
    image, label = dataset[7]
    assert image.shape == (3, 16, 16) and image.dtype == np.float32 and label == 2
    assert -2.2 < image.min() and image.max() < 2.7  # (x/255 - mean) / std range


def test_list_layout_is_detected_and_reads_labels(listed):
    dataset = build_dataset(make_config(listed), 'train')
    assert len(dataset) == 60
    labels = [label for _, label in dataset.samples]
    assert sorted(set(labels)) == list(range(10))


def test_layout_can_be_forced_and_missing_layout_is_named(folder):
    with pytest.raises(DatasetError, match=r"split 'train' not found.*train_list.txt.*DATA.LAYOUT=list"):
        find_samples(make_config(folder, 'DATA.LAYOUT', 'list'), 'train')


def test_uppercase_extensions_and_colour_modes_become_rgb(tmp_path):
    for c in range(2):
        (tmp_path / 'train' / f'n0{c}').mkdir(parents=True)
    rgb = np.random.RandomState(0).randint(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert('CMYK').save(tmp_path / 'train' / 'n00' / 'a.JPEG')
    Image.fromarray(rgb).convert('L').save(tmp_path / 'train' / 'n00' / 'b.PNG')
    Image.fromarray(rgb).convert('P').save(tmp_path / 'train' / 'n01' / 'c.png')
    Image.fromarray(rgb).convert('RGBA').save(tmp_path / 'train' / 'n01' / 'd.Png')
    (tmp_path / 'train' / 'n01' / 'notes.txt').write_text('ignored: not an image extension')
    dataset = build_dataset(make_config(tmp_path, 'MODEL.NUM_CLASSES', '2'), 'train')
    assert dataset.classes == ['n00', 'n01'] and len(dataset) == 4
    for i in range(4):
        pixels, label, skipped, _ = dataset[i]
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8 and skipped == 0


def test_errors_name_path_and_value(tmp_path, folder):
    with pytest.raises(DatasetError, match=r"data path '.*nowhere' not found \(DATA.DATA_PATH\)"):
        find_samples(make_config(tmp_path / 'nowhere'), 'train')
    with pytest.raises(DatasetError, match=r"has 10 classes but MODEL.NUM_CLASSES=5"):
        find_samples(make_config(folder, 'MODEL.NUM_CLASSES', '5'), 'train')
    (tmp_path / 'val' / 'a').mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no images found for split 'val'"):
        find_samples(make_config(tmp_path), 'val')


def test_weights_trained_on_other_classes_than_the_evaluated_folders_are_refused_naming_the_class(tmp_path):
    for name in ('cat', 'dog', 'eel'):
        os.makedirs(tmp_path / 'val' / name)
        Image.new('RGB', (16, 16)).save(tmp_path / 'val' / name / 'a.png')
    dataset = build_dataset(make_config(tmp_path, 'MODEL.NUM_CLASSES', '3'), 'val')
    check_weights_classes(['cat', 'dog', 'eel'], 'w.pdparams', dataset)  # the same classes: evaluated
    check_weights_classes(None, 'w.pdparams', dataset)  # a file without a class list: nothing to compare
    check_weights_classes(['0', '1', '2'], 'w.pdparams', dataset)  # bare positions name no class
    with pytest.raises(DatasetError, match=r"'w.pdparams' was trained on other classes than the evaluated set's: "
                                           r"class 'cow' is in the weights file but not in the evaluated set "
                                           r"\(1 only in the weights file, 1 only in the evaluated set\)"):
        check_weights_classes(['cat', 'cow', 'eel'], 'w.pdparams', dataset)
    with pytest.raises(DatasetError, match=r"the same classes in another order \(label 0 is 'dog' in the weights "
                                           r"file, 'cat' in the evaluated set\)"):
        check_weights_classes(['dog', 'cat', 'eel'], 'w.pdparams', dataset)


def test_a_list_layouts_class_names_are_display_names_not_checked_against_the_weights(listed, tmp_path):
    (listed / 'classes.txt').write_text(''.join(f'digit {i}\n' for i in range(10)))
    try:
        dataset = build_dataset(make_config(listed), 'val')
        assert dataset.classes[3] == 'digit 3'  # its lines give the labels; the names are for display
        check_weights_classes([f'n{i:08d}' for i in range(10)], 'w.pdparams', dataset)
    finally:
        os.remove(listed / 'classes.txt')


def test_bad_list_lines_and_labels_are_reported_with_file_and_line(tmp_path):
    for name in ('a.jpg', 'b.jpg'):  # the lines are checked whole: the images exist, the bad part is the line
        (tmp_path / name).write_bytes(b'')
    (tmp_path / 'train_list.txt').write_text('a.jpg 1\nb.jpg\n')
    with pytest.raises(DatasetError, match=r"train_list.txt:2: expected 'relative/path label', got 'b.jpg'"):
        find_samples(make_config(tmp_path), 'train')
    (tmp_path / 'train_list.txt').write_text('a.jpg 1\nb.jpg 10\n')
    with pytest.raises(DatasetError, match=r'train_list.txt:2: label 10 outside \[0, MODEL.NUM_CLASSES=10\)'):
        find_samples(make_config(tmp_path), 'train')


def corrupt_copy(src, dst):
    """A copy of the digits folder with a truncated JPEG and a text file named .jpg in train and val."""
    os.system(f'cp -r {src} {dst}')
    good = Image.open(next((dst / 'train' / '0').iterdir())).convert('RGB').resize((64, 64))
    good.save(dst / 'train' / '1' / 'full.jpg')
    data = (dst / 'train' / '1' / 'full.jpg').read_bytes()
    for split in ('train', 'val'):
        (dst / split / '1' / 'truncated.jpg').write_bytes(data[:len(data) // 2])
        (dst / split / '3' / 'zz_text.jpg').write_text('this is not a jpeg')
    return dst


def test_train_replaces_and_counts_undecodable_files_across_workers(folder, tmp_path):
    root = corrupt_copy(folder, tmp_path / 'bad')
    config = make_config(root, 'DATA.NUM_WORKERS', '2', 'DATA.BATCH_SIZE', '4')
    dataset = build_dataset(config, 'train')
    loader = build_dataloader(config, dataset, 'train')
    assert sum(int(dataset[i][2]) for i in range(len(dataset))) == 2  # each bad file skipped once
    loader.batch_sampler.set_epoch(0)
    drawn = [index for batch in loader.batch_sampler for index, _ in batch]
    batches = [(y.numpy(), skipped.numpy()) for _, y, skipped in loader]
    labels = np.concatenate([y for y, _ in batches])
    assert len(labels) == len(dataset) // 4 * 4 and labels.min() >= 0
    assert sum(int(s.sum()) for _, s in batches) == sum(int(dataset[i][2]) for i in drawn)


def test_eval_marks_undecodable_files_with_label_minus_one(folder, tmp_path):
    dataset = build_dataset(make_config(corrupt_copy(folder, tmp_path / 'bad')), 'val')
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    assert labels.count(-1) == 2 and len(labels) == 32


def test_the_training_loader_logs_the_workers_auto_chose(folder, pit_log):
    build_dataloader(make_config(folder, 'DATA.NUM_WORKERS', 'auto'), build_dataset(make_config(folder), 'train'),
                     'train')
    assert f'train loader: {num_workers("auto")} worker process(es) per training process (DATA.NUM_WORKERS auto)' \
        in pit_log.getvalue()


def test_the_loader_speed_is_logged_once_after_the_first_batches(pit_log):
    clock = LoaderClock(batches=3)
    for _ in range(3):
        clock.record(waited=0.0, images=8)
    assert pit_log.getvalue() == ''  # the first batch (workers starting) is not timed
    for _ in range(5):
        clock.record(waited=0.0, images=8)
    lines = pit_log.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r'train loader: [\d.]+ img/s over batches 2-4 of this process, the '
                                            r'trainer waited for data 0% of that time', lines[0]), lines


def test_exactly_once_sampler_covers_every_index_once_over_ranks():
    seen = []
    for rank in range(3):
        for batch in ExactlyOnceSampler(31, 4, world_size=3, rank=rank):
            seen += batch
    assert sorted(seen) == list(range(31))


def test_distributed_val_loader_counts_each_image_once(folder):
    config = make_config(folder, 'DATA.BATCH_SIZE', '4')
    dataset = build_dataset(config, 'val')
    counts = [sum(len(y) for _, y in build_dataloader(config, dataset, 'val', 2, rank)) for rank in range(2)]
    assert counts == [15, 15] and sum(counts) == len(dataset)


def test_repeated_aug_sampler_repeats_each_index_on_different_ranks():
    class Fake:
        def __len__(self):
            return 512
    ranks = [RepeatedAugSampler(Fake(), 8, world_size=3, rank=r, repeats=3, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    per_rank = [s.indices() for s in ranks]
    assert all(len(p) == 512 // 256 * 256 // 3 for p in per_rank)
    full = [ranks[0].__class__(Fake(), 8, 3, r, 3, 1) for r in range(3)]
    # before the DeiT cut, the three copies of an index go to three different ranks
    order = np.random.RandomState(1 + 4).permutation(512)
    assert [per_rank[r][0] for r in range(3)] == [order[0]] * 3
    assert len(full[0]) == (512 // 256 * 256 // 3) // 8
    ranks[0].set_epoch(5)
    assert ranks[0].indices() != per_rank[0]


def test_train_loader_batches_are_tensors_of_the_configured_shape(folder):
    config = make_config(folder)
    loader = build_dataloader(config, build_dataset(config, 'train'), 'train')
    images, labels, skipped = next(iter(loader))
    assert images.shape == [8, 3, 16, 16] and labels.dtype == paddle.int64 and labels.shape == [8]
    assert skipped.shape == [8] and int(skipped.sum()) == 0
