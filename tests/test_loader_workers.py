"""What DataLoader workers receive: picklable under every start method, and samples that do not depend on
which worker (or how many) produced them."""
import multiprocessing
import os
import pickle

import quiet  # noqa: F401  (first, as in every entry point: a spawned process imports this module before paddle)

import numpy as np
import pytest

from config import build_config
from datasets import build_dataloader, build_dataset
from demo_data import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ['rand-m9-mstd0.5-inc1', 'rand-m9-mstd0.5', 'rand-m7-n3-mstd101-mmax8-p0.7', 'rand-m9-mstd0.5-w0',
            'original', 'v0', '']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    write_dataset(root, source='digits', image_size=32, train_per_class=4, val_per_class=1)
    return root


def recipe(data, *opts):
    """The default recipe of configs/pit_ti.yaml at 32 px on the 10-class data."""
    return build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'),
                        ['DATA.DATA_PATH', data, 'DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10',
                         'DATA.BATCH_SIZE', '8', *opts], world_size=1)


@pytest.mark.parametrize('policy', POLICIES)
def test_the_train_dataset_of_every_auto_augment_policy_pickles_and_augments_the_same(data, policy):
    dataset = build_dataset(recipe(data, 'AUG.AUTO_AUGMENT', policy), 'train')
    copy = pickle.loads(pickle.dumps(dataset))
    for key in [(0, 11), (5, 12345), (17, 7)]:
        np.testing.assert_array_equal(dataset[key][0], copy[key][0])


def sample_in_spawned_process(dataset, key):
    return dataset[key][0]


def test_a_worker_started_by_spawn_builds_the_same_sample(data):
    dataset = build_dataset(recipe(data), 'train')
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        # a bound, so that a worker that never answers fails the test instead of holding the suite
        spawned = pool.apply_async(sample_in_spawned_process, (dataset, (3, 99))).get(timeout=120)
    np.testing.assert_array_equal(spawned, dataset[(3, 99)][0])


def batches(config, epoch):
    loader = build_dataloader(config, build_dataset(config, 'train'), 'train')
    loader.batch_sampler.set_epoch(epoch)
    return [images.numpy() for images, _, _ in loader]


def test_augmented_batches_do_not_depend_on_the_number_of_workers(data):
    inline = batches(recipe(data, 'DATA.NUM_WORKERS', '0'), epoch=2)
    workers = batches(recipe(data, 'DATA.NUM_WORKERS', '3'), epoch=2)
    assert len(inline) == len(workers) == 5
    for a, b in zip(inline, workers):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(inline[0], batches(recipe(data, 'DATA.NUM_WORKERS', '0'), epoch=3)[0])
