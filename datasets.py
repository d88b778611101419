"""ImageNet-style datasets (class folders or list files), samplers and DataLoaders.

Layouts under DATA.DATA_PATH (DATA.LAYOUT 'auto' picks the first that exists for the split):
    folder: {split}/<class>/<image>         classes = sorted folder names (e.g. wnids), index = position
    list:   {split}_list.txt                 lines 'relative/path label'; class names from classes.txt
                                             (one per line) when present, else '0'..'N-1'
With -eval, DATA.EVAL_SET picks the val set: the val split (imagenet; real adds ReaL's label sets, read_real_labels)
or the class folders of ImageNetV2, -A or -R directly under DATA.DATA_PATH (eval_set_samples).
Images are decoded with PIL and converted to RGB (grey, palette, RGBA, CMYK). A file that cannot be decoded is
logged with its path; in training it is replaced by the next readable sample, and each training sample carries
the number of files it skipped (summed by `engine.train_one_epoch` over workers and processes, so nothing is
shared between processes and the dataset pickles plainly); in evaluation it comes back as a zero image with
label -1, which `engine.evaluate` counts and excludes (the run then fails unless DATA.SKIP_BAD_EVAL_IMAGES).
"""
import functools
import json
import logging
import math
import os
import random
import time

import numpy as np
import paddle
from PIL import Image

import gpu
from errors import UserError
from inference import read_imagenet_index
from stops import init_dataloader_worker
from transforms import NormalizeOnDevice, build_erasing, build_transforms

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
IMAGE_FILE_EXTENSIONS = IMAGE_EXTENSIONS + ('.gif',)  # what predict and visualize read (a GIF: its first frame)
logger = logging.getLogger('pit')


class DatasetError(UserError):
    """Dataset files or values that cannot be used; the message names the path/value."""


def _folder_samples(split_dir):
    """([(path, label)], classes) of class folders: classes sorted by name, label = position (the wnid order)."""
    classes = sorted(d.name for d in os.scandir(split_dir) if d.is_dir())
    return [(path, label) for label, name in enumerate(classes)
            for path in _folder_images(os.path.join(split_dir, name))], classes


def _folder_images(folder):
    """The image files under one class folder, sorted; symlinked folders are followed once (a link loop ends)
    and an empty class folder is reported (it keeps its index, as the wnid order demands)."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        logger.warning(f"class folder '{folder}' holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return found


def _list_samples(root, list_file, num_classes):
    """([(path, label)], classes) of a list file, checked whole before any work: every line parses as
    'relative/path label', every label is in [0, num_classes), every image exists. DatasetError naming the list
    file, the first bad line and what is wrong with it, and how many more lines are bad."""
    samples, numbers, problems = [], [], []
    for number, line in enumerate(_read_lines(list_file), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
            problems.append((number, f"expected 'relative/path label', got {line.strip()!r}"))
            continue
        label = int(parts[1])
        if not 0 <= label < num_classes:
            problems.append((number, f'label {label} outside [0, MODEL.NUM_CLASSES={num_classes})'))
        else:
            samples.append((os.path.join(root, parts[0].strip()), label))
            numbers.append(number)
    problems += [(number, f"image '{path}' {reason} (paths are relative to DATA.DATA_PATH={root})")
                 for number, (path, _), reason in zip(numbers, samples, missing_files(samples)) if reason]
    if problems:
        number, message = min(problems)
        more = f'; {len(problems) - 1} more bad line(s) in this list' if len(problems) > 1 else ''
        raise DatasetError(f'{list_file}:{number}: {message}{more}')
    names_file = os.path.join(root, 'classes.txt')
    if os.path.isfile(names_file):
        classes = [line.strip() for line in _read_lines(names_file) if line.strip()]
    else:
        classes = [str(i) for i in range(num_classes)]
    return samples, classes


def _read_lines(path):
    """The lines of a UTF-8 text file (a BOM some editors write is not part of line 1); DatasetError naming
    the line of a byte that is not UTF-8."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig').splitlines()
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise DatasetError(f'{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})') from None


def missing_files(samples):
    """For each (path, label), '' when path is a file, else why not ('not found', 'is not a file', 'not found:
    folder ... cannot be read (...)'). Each folder is listed once (os.scandir), not each file stat'ed: a
    1.28M-image list over 1,000 folders is 1,000 listings."""
    listings = {}
    reasons = []
    for path, _ in samples:
        folder, _, name = path.rpartition(os.sep)  # os.path.split's result for these joined paths, faster
        if folder not in listings:
            listings[folder] = _list_folder(folder)
        files, error = listings[folder]
        reasons.append('' if name in files else error or (
            'is not a file' if os.path.exists(path) else 'not found'))
    return reasons


def _list_folder(folder):
    """(names of the files in folder, symlinks to files included; None or why the folder cannot be listed)."""
    try:
        with os.scandir(folder or '.') as entries:
            return {entry.name for entry in entries if entry.is_file()}, None
    except FileNotFoundError:
        return set(), f"not found (no folder '{folder}')"
    except OSError as e:
        return set(), f"not found: folder '{folder}' cannot be read ({e.strerror or e})"


def split_layout(config, split):
    """('folder' or 'list', the split's folder, its list file): DATA.LAYOUT, with auto resolved by what exists;
    DatasetError naming both when the split is not there."""
    root, layout = config.DATA.DATA_PATH, config.DATA.LAYOUT
    if not os.path.isdir(root):
        raise DatasetError(f"data path '{root}' not found (DATA.DATA_PATH)")
    split_dir, list_file = os.path.join(root, split), os.path.join(root, f'{split}_list.txt')
    if layout == 'auto':
        layout = 'folder' if os.path.isdir(split_dir) else 'list' if os.path.isfile(list_file) else None
    if layout is None or (layout == 'folder' and not os.path.isdir(split_dir)) or \
            (layout == 'list' and not os.path.isfile(list_file)):
        raise DatasetError(f"split '{split}' not found: expected folder '{split_dir}' or list '{list_file}' "
                           f"(DATA.DATA_PATH={root}, DATA.LAYOUT={config.DATA.LAYOUT})")
    return layout, split_dir, list_file


def find_samples(config, split):
    """([(path, label)], classes) of a split, with the checks that name what is wrong."""
    root = config.DATA.DATA_PATH
    layout, split_dir, list_file = split_layout(config, split)
    if layout == 'folder':
        samples, classes = _folder_samples(split_dir)
    else:
        samples, classes = _list_samples(root, list_file, config.MODEL.NUM_CLASSES)
    if not samples:
        raise DatasetError(f"no images found for split '{split}' in '{split_dir if layout == 'folder' else list_file}' "
                           f'(extensions {", ".join(IMAGE_EXTENSIONS)})')
    if len(classes) != config.MODEL.NUM_CLASSES:
        raise DatasetError(f"'{split_dir if layout == 'folder' else root}' has {len(classes)} classes but "
                           f'MODEL.NUM_CLASSES={config.MODEL.NUM_CLASSES}')
    return samples, classes


# DATA.EVAL_SET sets whose class folders lie directly under DATA.DATA_PATH (as their archives unpack)
FOLDER_EVAL_SETS = {'v2': 'ImageNetV2', 'a': 'ImageNet-A', 'r': 'ImageNet-R'}


def eval_set_samples(config):
    """([(path, label)], classes, class_subset) of DATA.EVAL_SET v2, a or r: class folders directly under
    DATA.DATA_PATH. v2: folders named by class index 0..NUM_CLASSES-1 (label = the number, not the position of
    the name in a lexical sort), class_subset None. a, r: folders named by ImageNet-1k wnids, label = the wnid's
    position in the 1000-class order (inference.read_imagenet_index); class_subset = the sorted labels of the
    folders present (the 200 classes of the set), to which evaluation restricts the logits. classes: a name per
    label (ImageNet wnids for 1000 classes). DatasetError naming a folder that is not a class of the set."""
    eval_set, root = config.DATA.EVAL_SET, config.DATA.DATA_PATH
    title, num_classes = FOLDER_EVAL_SETS[eval_set], config.MODEL.NUM_CLASSES
    if not os.path.isdir(root):
        raise DatasetError(f"data path '{root}' not found (DATA.DATA_PATH, DATA.EVAL_SET {eval_set}: {title})")
    wnids = [wnid for wnid, _ in read_imagenet_index()]
    if eval_set == 'v2':
        expected = f'a class index 0..{num_classes - 1}'
        label_of = {str(i): i for i in range(num_classes)}.get
    else:
        expected = 'an ImageNet-1k wnid (n01440764 ...)'
        label_of = {wnid: i for i, wnid in enumerate(wnids)}.get
    labelled = []
    for name in sorted(d.name for d in os.scandir(root) if d.is_dir()):
        if label_of(name) is None:
            raise DatasetError(f"folder '{os.path.join(root, name)}' is not {expected} "
                               f'(DATA.EVAL_SET {eval_set}: {title} class folders under DATA.DATA_PATH)')
        labelled.append((label_of(name), name))
    samples = [(path, label) for label, name in sorted(labelled) for path in _folder_images(os.path.join(root, name))]
    if not samples:
        raise DatasetError(f"no images of DATA.EVAL_SET {eval_set} ({title}) found in class folders under '{root}' "
                           f'(extensions {", ".join(IMAGE_EXTENSIONS)})')
    classes = wnids if num_classes == len(wnids) else [str(i) for i in range(num_classes)]
    return samples, classes, None if eval_set == 'v2' else sorted(label for label, _ in labelled)


def read_real_labels(path, samples, num_classes):
    """ReaL's labels of the val images `samples` ([(path, label)] in dataset order): real.json is a JSON list
    with one entry per val image in sorted file name order (ILSVRC2012_val_00000001 ...), each a list of label
    indices (empty: no label agreed on; the image is left out of ReaL accuracy). Returns those lists in the
    order of samples. DatasetError naming the file and the first bad entry, or the two counts that differ."""
    try:
        with open(path, encoding='utf-8') as f:
            entries = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"ReaL labels '{path}' (DATA.REAL_LABELS) are not JSON: {e}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"ReaL labels '{path}' (DATA.REAL_LABELS) must be a JSON list of label lists, "
                           f'got {type(entries).__name__}')
    for number, entry in enumerate(entries):
        if not isinstance(entry, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes for v in entry):
            raise DatasetError(f"ReaL labels '{path}' entry {number}: expected a list of label indices in "
                               f'[0, MODEL.NUM_CLASSES={num_classes}), got {entry!r}')
    if len(entries) != len(samples):
        raise DatasetError(f"ReaL labels '{path}' hold {len(entries)} entries but the val split has {len(samples)} "
                           'images (one entry per val image, in sorted file name order)')
    names = [os.path.basename(sample_path) for sample_path, _ in samples]
    position = {name: rank for rank, name in enumerate(sorted(names))}
    return [entries[position[name]] for name in names]


def load_rgb(path):
    """Decoded RGB PIL image (fully loaded, so truncated files fail here, not later). Images over PIL's
    decompression-bomb limit raise Image.DecompressionBombError before they are decoded."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def to_rgb(img):
    """RGB of any PIL mode (an RGB image itself: PIL's convert would copy it): 16- and 32-bit greys are scaled to
    8 bit by their bit depth (65535 -> 255), where PIL's convert would clip everything above 255 to white."""
    if img.mode == 'RGB':
        return img
    if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        pixels = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith('I;16') or pixels.max(initial=0) <= 65535 else 2.0 ** 32 - 1
        grey = np.clip(np.rint(pixels * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, 'L').convert('RGB')
    if img.mode == 'F':
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), 'L').convert('RGB')
    return img.convert('RGB')


class ImageNetDataset(paddle.io.Dataset):
    """Samples of one split: train (uint8 pixels [S, S, 3], label int64, skipped undecodable files int64, erasing
    boxes: a tuple of (top, left, height, width) ints, see random_erasing), val (image float32 [3, S, S], label);
    see the module docstring for bad files."""

    def __init__(self, samples, classes, transform, train, image_size, class_subset=None, real_labels=None,
                 named_classes=True):
        self.samples = samples
        self.named_classes = named_classes  # classes name the labels (folders); False: display names (a list)
        self.class_subset = class_subset  # labels the logits are restricted to in evaluation (None: all)
        self.real_labels = real_labels  # ReaL's label list per sample (DATA.EVAL_SET real), or None
        self.image_size = image_size
        self.classes = classes
        self.transform = transform
        self.train = train

    def __len__(self):
        return len(self.samples)

    def _read(self, index):
        """(transformed image, label), or (None, label) when the file cannot be decoded (logged)."""
        path, label = self.samples[index]
        try:
            img = load_rgb(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            logger.warning(f"cannot decode image '{path}': {type(e).__name__}: {e}")
            return None, label
        return self.transform(img), label

    def __getitem__(self, key):
        """key: an index, or (index, seed) from SeededBatchSampler: python's and numpy's RNGs are seeded per
        sample, so an augmented sample depends only on (SEED, epoch, rank, position), never on which worker
        process drew it, how many workers there are or what they drew before (exact resume, persistent
        workers)."""
        index = key
        if isinstance(key, tuple):
            index, seed = key
            random.seed(seed)
            np.random.seed(seed)
        if not self.train:
            image, label = self._read(index)
            if image is None:
                return np.zeros((3, self.image_size, self.image_size), dtype=np.float32), np.int64(-1)
            return image, np.int64(label)
        for skipped in range(len(self.samples)):
            image, label = self._read((index + skipped) % len(self.samples))
            if image is not None:
                pixels, boxes = image
                return pixels, np.int64(label), np.int64(skipped), boxes
        raise DatasetError('no image of the training set can be decoded')


def class_difference(first, first_name, second, second_name):
    """None when the class lists first and second are equal, else what differs: the first class only one has
    (with both counts) or, for the same classes, the first position where their orders differ."""
    first, second = list(first), list(second)
    if first == second:
        return None
    first_set, second_set = set(first), set(second)
    only_first = [c for c in first if c not in second_set]
    only_second = [c for c in second if c not in first_set]
    if not only_first and not only_second:
        at = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        return f"the same classes in another order (label {at} is '{first[at]}' in {first_name}, " \
               f"'{second[at]}' in {second_name})"
    where = (f"class '{only_first[0]}' is in {first_name} but not in {second_name}" if only_first else
             f"class '{only_second[0]}' is in {second_name} but not in {first_name}")
    return f'{where} ({len(only_first)} only in {first_name}, {len(only_second)} only in {second_name})'


def check_same_classes(train_set, val_set):
    """DatasetError naming the first class that only one split has, when the train and val class lists differ:
    a label is a class's position in its split's list, so a val folder that lacks a train class (or has another
    one in its place) would score every prediction against the wrong class without any error."""
    difference = class_difference(train_set.classes, 'train', val_set.classes, 'val')
    if difference:
        raise DatasetError(f"train and val splits have different classes: {difference}; a label is the class's "
                           'position, so both splits need the same class folders')


def check_weights_classes(classes, path, dataset):
    """DatasetError when a weights file's class list (classes, None when it has none) and the evaluated dataset's
    name different classes, or the same in another order: the model's output k would be scored as the dataset's
    class k. Not compared: a list layout's classes (its lines give the labels; classes.txt only names them for
    display) and lists of bare positions ('0', '1', ...), which name nothing."""
    def named(names):
        return names is not None and list(names) != [str(i) for i in range(len(names))]
    difference = class_difference(classes, 'the weights file', dataset.classes, 'the evaluated set') \
        if dataset.named_classes and named(classes) and named(dataset.classes) else None
    if difference:
        raise DatasetError(f"'{path}' was trained on other classes than the evaluated set's: {difference}")


def build_dataset(config, mode):
    """The 'train' or 'val' dataset of config, with its transform. With -eval, 'val' is DATA.EVAL_SET's:
    imagenet the val split; real the val split with ReaL's labels (read_real_labels); v2, a, r their class
    folders (eval_set_samples)."""
    eval_set, subset, real = config.DATA.EVAL_SET if mode == 'val' else 'imagenet', None, None
    named = True
    if eval_set in FOLDER_EVAL_SETS:
        samples, classes, subset = eval_set_samples(config)
    else:
        samples, classes = find_samples(config, mode)
        named = split_layout(config, mode)[0] == 'folder'
    if eval_set == 'real':
        real = read_real_labels(config.DATA.REAL_LABELS, samples, config.MODEL.NUM_CLASSES)
    return ImageNetDataset(samples, classes, build_transforms(config, mode), train=mode == 'train',
                           image_size=config.DATA.IMAGE_SIZE, class_subset=subset, real_labels=real,
                           named_classes=named)


class RepeatedAugSampler(paddle.io.BatchSampler):
    """DeiT's RASampler as a batch sampler: each index repeated `repeats` times per epoch (consecutively, so
    the copies land on different processes), shuffled by (seed + epoch), padded, strided over processes, and cut
    to floor(len // 256 * 256 / world_size) samples per process (DeiT), or ceil(len / world_size) for datasets
    under 256 images."""

    def __init__(self, dataset, batch_size, world_size=1, rank=0, repeats=3, seed=0, shuffle=True):
        self.dataset_len = len(dataset)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.repeats, self.seed, self.shuffle = repeats, seed, shuffle
        self.epoch = 0
        self.num_samples = int(math.ceil(self.dataset_len * repeats / world_size))
        selected = self.dataset_len // 256 * 256 // world_size
        self.num_selected = selected if selected > 0 else int(math.ceil(self.dataset_len / world_size))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def indices(self):
        order = (np.random.RandomState(self.seed + self.epoch).permutation(self.dataset_len) if self.shuffle
                 else np.arange(self.dataset_len))
        repeated = np.repeat(order, self.repeats)
        total = self.num_samples * self.world_size
        repeated = np.concatenate([repeated, repeated[:total - len(repeated)]])
        return repeated[self.rank:total:self.world_size][:self.num_selected].tolist()

    def __iter__(self):
        indices = self.indices()
        for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):  # drop_last
            yield indices[start:start + self.batch_size]

    def __len__(self):
        return self.num_selected // self.batch_size


class ExactlyOnceSampler(paddle.io.BatchSampler):
    """Evaluation: rank r takes indices r, r + N, ... in order; every image is seen once over all ranks
    (no padding, so shares may differ by one)."""

    def __init__(self, dataset_len, batch_size, world_size=1, rank=0):
        self.indices = list(range(rank, dataset_len, world_size))
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]

    def __len__(self):
        return math.ceil(len(self.indices) / self.batch_size)


class SeededBatchSampler(paddle.io.BatchSampler):
    """Wraps a training batch sampler: yields batches of (index, seed), the seed a function of (SEED, epoch,
    rank, position in this rank's epoch), for ImageNetDataset to seed each sample's augmentation with. An epoch
    may start at a later batch (a run resumed inside it): the batches before are skipped, not drawn again."""

    def __init__(self, batch_sampler, seed, rank):
        self.batch_sampler, self.seed, self.rank, self.epoch, self.start = batch_sampler, seed, rank, 0, 0

    def set_epoch(self, epoch, start=0):
        """The next iteration yields batch `start` onwards of `epoch` (0-based)."""
        self.epoch, self.start = epoch, start
        self.batch_sampler.set_epoch(epoch)

    def sample_seed(self, position):
        return int(np.random.SeedSequence([self.seed, self.epoch, self.rank, position]).generate_state(1)[0])

    def batch_seed(self, number):
        """The seed of what the trainer draws for batch `number` of this epoch (the erasing fill), a stream
        apart from the samples' (a 5-word entropy, theirs have 4)."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.rank, number, 1]).generate_state(1)[0])

    def __iter__(self):
        position = 0
        for number, batch in enumerate(self.batch_sampler):
            if number >= self.start:
                yield [(index, self.sample_seed(position + i)) for i, index in enumerate(batch)]
            position += len(batch)

    def __len__(self):
        return len(self.batch_sampler)


def build_dataloader(config, dataset, mode, world_size=1, rank=0, shm_free_bytes=None):
    """Train: DeviceBatches of (images float32 [B, 3, S, S] normalised and randomly erased on the device, labels
    int64 [B], skipped int64 [B]), shuffled, last partial batch dropped, `loader.batch_sampler.set_epoch(e, start)`
    each epoch; repeated augmentation with DATA.REPEATED_AUG. Val: a DataLoader of (images float32 [B, 3, S, S],
    labels int64 [B]) in order, each image exactly once over all ranks (a rank may get none when there are fewer
    images than ranks). DATA.NUM_WORKERS processes (`num_workers`) per loader, logged; batches pass through
    shared memory as use_shared_memory decides (shm_free_bytes: the free /dev/shm to decide by; None:
    measured). Workers ignore SIGINT/SIGTERM and die with their process (stops.init_dataloader_worker)."""
    batch_size = config.DATA.BATCH_SIZE if mode == 'train' else config.DATA.BATCH_SIZE_EVAL or config.DATA.BATCH_SIZE
    if mode == 'train' and config.DATA.REPEATED_AUG:
        sampler = RepeatedAugSampler(dataset, config.DATA.BATCH_SIZE, world_size, rank,
                                     config.DATA.REPEATED_AUG_REPEATS, seed=config.SEED)
    elif mode == 'train':
        sampler = paddle.io.DistributedBatchSampler(dataset, config.DATA.BATCH_SIZE, num_replicas=world_size,
                                                    rank=rank, shuffle=True, drop_last=True)
    else:
        sampler = ExactlyOnceSampler(len(dataset), batch_size, world_size, rank)
    if mode == 'train' and len(sampler) == 0:
        raise DatasetError(f'{mode} split of {len(dataset)} images gives no batch of DATA.BATCH_SIZE='
                           f'{config.DATA.BATCH_SIZE} per process')
    if mode == 'train':
        sampler = SeededBatchSampler(sampler, config.SEED, rank)
    workers = num_workers(config.DATA.NUM_WORKERS)
    logger.info(f'{mode} loader: {workers} worker process(es) per training process (DATA.NUM_WORKERS '
                f'{config.DATA.NUM_WORKERS})')
    # persistent workers: started once per run, not once per epoch and evaluation (a spawned worker imports
    # paddle and this repo again); per-sample seeds keep their output independent of their history.
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                  collate_fn=collate_train if mode == 'train' else None,
                                  use_shared_memory=use_shared_memory(config, batch_size, mode, workers,
                                                                      shm_free_bytes),
                                  return_list=True, persistent_workers=workers > 0,
                                  worker_init_fn=functools.partial(init_dataloader_worker, os.getpid()))
    if mode != 'train':
        return loader
    return DeviceBatches(loader, NormalizeOnDevice(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD),
                         build_erasing(config))


def collate_train(samples):
    """Training samples -> [pixels uint8 [B, S, S, 3], labels int64 [B], skipped int64 [B], erasing boxes (a list
    of each sample's tuple of boxes)]. The boxes stay python ints: paddle's DataLoader passes numbers in a batch's
    structure through as they are (2.6 and 3.x), so the trainer reads them without a device round trip."""
    pixels, labels, skipped, boxes = zip(*samples)
    return [np.stack(pixels), np.stack(labels), np.stack(skipped), list(boxes)]


MAX_AUTO_WORKERS = 8


def num_workers(setting, cores=None, processes=None):
    """DataLoader workers per training process for DATA.NUM_WORKERS `setting`: the number itself, or for 'auto'
    the cores this process may use (its CPU affinity) shared by the training processes of this node, less one
    for the training process itself, at least 1 and at most MAX_AUTO_WORKERS:
    min(8, max(1, cores // processes - 1)). An 8-core node with one GPU gets 7, a 48-core node with 8 GPUs 5,
    a 2-core machine 1."""
    if setting != 'auto':
        return setting
    return min(MAX_AUTO_WORKERS, worker_budget(cores, processes))


def worker_budget(cores=None, processes=None):
    """Worker processes a training process can keep busy without taking another's cores:
    max(1, cores // processes - 1) (cores: this process's CPU affinity; processes: gpu.local_process_count())."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    processes = processes or gpu.local_process_count()
    return max(1, cores // processes - 1)


def advised_workers(workers, loader_speed, model_speed, budget):
    """Workers per process for the loader to keep up with the model (loader speed taken as proportional to the
    workers), bounded as DATA.NUM_WORKERS auto is: by `budget` (worker_budget: the cores per process less one)."""
    return max(1, min(math.ceil(max(workers, 1) * model_speed / max(loader_speed, 1e-9)), budget))


class DeviceBatches:
    """The training DataLoader as train_one_epoch reads it: its uint8 batches become (images float32
    [B, 3, S, S] normalised, with the samples' erasing boxes filled, labels, skipped), on the loader's device.

    The erasing fill is drawn from paddle's generator seeded per batch (SeededBatchSampler.batch_seed), so a run
    resumed at any batch erases with the same values. Over the first LOADER_CLOCK_BATCHES batches after the
    first (which waits for the workers to start), the images/s delivered and the share of that time the trainer
    waited for them are logged once. Everything else (batch_sampler, dataset, use_shared_memory, len) is the
    DataLoader's."""

    def __init__(self, loader, normalize, erasing):
        self.loader, self.normalize, self.erasing = loader, normalize, erasing
        self.clock = LoaderClock(LOADER_CLOCK_BATCHES)

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        number = self.batch_sampler.start
        batches = iter(self.loader)
        while True:
            asked = time.perf_counter()
            try:
                pixels, labels, skipped, boxes = next(batches)
            except StopIteration:
                return
            self.clock.record(time.perf_counter() - asked, labels.shape[0])
            if any(boxes):
                paddle.seed(self.batch_sampler.batch_seed(number) % 2 ** 31)
            yield self.erasing.erase(self.normalize(pixels), boxes), labels, skipped
            number += 1


LOADER_CLOCK_BATCHES = 20


class LoaderClock:
    """Measures a loader over its first `batches` batches after the first, once per run, and logs the result:
    images/s delivered and the share of the time the trainer waited for data (near 0: the loader keeps up;
    near 100%: the run is data-bound, more workers would help)."""

    def __init__(self, batches):
        self.batches, self.seen, self.images, self.waited, self.start = batches, 0, 0, 0.0, None

    def record(self, waited, images):
        """One batch of `images` that the trainer waited `waited` seconds for."""
        if self.seen > self.batches:
            return
        self.seen += 1
        if self.start is None:
            self.start = time.perf_counter()
            return
        self.images += images
        self.waited += waited
        if self.seen > self.batches:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            logger.info(f'train loader: {self.images / elapsed:.1f} img/s over batches 2-{self.seen} of this process, '
                        f'the trainer waited for data {self.waited / elapsed:.0%} of that time')


# mode -> (need, free) of the loaders of this process that pass batches through /dev/shm, for the message of a
# worker that dies (main_single_gpu.run): a full /dev/shm kills workers as the out-of-memory killer does
SHARED_MEMORY_IN_USE = {}


def use_shared_memory(config, batch_size, mode, workers, free_bytes=None):
    """DATA.SHARED_MEMORY decided for a loader of batch_size and `workers` workers by gpu.shared_memory_decision
    against the free /dev/shm (free_bytes, or measured), the need counted over the training processes of this
    node (uint8 training batches, float32 evaluation batches); logs the decision's warning, if it has one."""
    need = gpu.shared_memory_need(batch_size, config.DATA.IMAGE_SIZE, workers, gpu.local_process_count(),
                                  itemsize=1 if mode == 'train' else 4)
    free = gpu.free_shared_memory() if free_bytes is None else free_bytes
    use, message = gpu.shared_memory_decision(need, free, config.DATA.SHARED_MEMORY)
    if message:
        logger.warning(f'{mode} loader: {message}')
    if use and need:
        SHARED_MEMORY_IN_USE[mode] = (need, free)
    return use


def shared_memory_note():
    """'' or, when loaders of this process use /dev/shm, the clause a dead-worker message adds about it."""
    if not SHARED_MEMORY_IN_USE:
        return ''
    need = max(need for need, _ in SHARED_MEMORY_IN_USE.values())
    free = next(iter(SHARED_MEMORY_IN_USE.values()))[1]
    shown = f'{gpu.gigabytes(free)} free' if free is not None else 'free space unknown'
    return (f', or by a full /dev/shm, which its batches passed through: {shown} at start, about '
            f'{gpu.gigabytes(need)} needed; enlarge it (docker run --shm-size=...) or set DATA.SHARED_MEMORY False')


class ImagePathError(UserError):
    """An -img_path that cannot be listed; the message names it."""


def list_images(paths):
    """(image files, [(path, why it is skipped)]) of an -img_path: the files given, plus the files with an image
    extension (IMAGE_FILE_EXTENSIONS) inside given folders, sorted; the other entries of those folders are
    skipped. ImagePathError for a folder that cannot be listed."""
    files, skipped = [], []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            raise ImagePathError(f"cannot list folder '{path}' (-img_path): {e.strerror or e}") from None
        for entry in (os.path.join(path, name) for name in entries):
            if os.path.isdir(entry):
                skipped.append((entry, 'a folder (folders inside -img_path folders are not searched)'))
            elif entry.lower().endswith(IMAGE_FILE_EXTENSIONS):
                files.append(entry)
            else:
                skipped.append((entry, f'not an image file ({" ".join(IMAGE_FILE_EXTENSIONS)})'))
    return files, skipped
