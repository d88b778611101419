"""demo_data (tools/prepare_data.py) writes real images in both ImageNet layouts, with disjoint splits."""
import os

from PIL import Image

from demo_data import read_idx, write_dataset


def test_folder_layout_has_class_folders_and_disjoint_heldout(tmp_path):
    info = write_dataset(str(tmp_path), source='digits', image_size=16, train_per_class=5, val_per_class=3)
    assert info['source'] == 'digits' and (info['train'], info['val'], info['heldout']) == (50, 30, 10)
    assert sorted(os.listdir(tmp_path / 'train')) == [str(i) for i in range(10)]
    img = Image.open(next((tmp_path / 'val' / '7').iterdir()))
    assert img.size == (16, 16)
    train_ids = {f.split('_')[1] for c in os.listdir(tmp_path / 'train') for f in os.listdir(tmp_path / 'train' / c)}
    val_ids = {f.split('_')[1] for c in os.listdir(tmp_path / 'val') for f in os.listdir(tmp_path / 'val' / c)}
    assert not train_ids & val_ids


def test_list_layout_lines_point_at_existing_files_with_their_label(tmp_path):
    write_dataset(str(tmp_path), source='digits', layout='list', image_size=16, train_per_class=2, val_per_class=1)
    lines = open(tmp_path / 'train_list.txt').read().splitlines()
    assert len(lines) == 20
    for line in lines:
        path, label = line.split()
        assert os.path.isfile(tmp_path / path) and path.split('/')[1] == label


def test_idx_reader_parses_header_and_data(tmp_path):
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3]) + bytes(range(6))
    (tmp_path / 'x.idx').write_bytes(raw)
    array = read_idx(str(tmp_path / 'x.idx'))
    assert array.shape == (2, 1, 3) and array[1, 0, 2] == 5
