"""Training curves of a run as one PNG, from its SAVE/metrics.jsonl (metrics.py's epoch records).

    python tools/plot_metrics.py output/train                      # writes output/train/metrics.png
    python tools/plot_metrics.py output/train -out curves.png -size 1200 400

Three charts side by side, over epochs: the losses (train; val of the model and of its EMA where evaluated),
Acc@1 of the model and of the EMA, and the learning rate; each with axes, ticks, labels and a legend. Epochs
without an evaluation leave gaps. The PNG is written under a temporary name, then renamed. A missing or malformed
metrics.jsonl ends in one line naming the file (and line), exit status 2.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (Pillow before paddle, as in every entry point)

from PIL import Image  # noqa: E402

from cli import argument_parser, run_command  # noqa: E402
from drawing import line_chart, save_png  # noqa: E402
from errors import UserError  # noqa: E402
from metrics import METRICS_FILE, read_records  # noqa: E402

# (chart title, [(series label, record key)])
CHARTS = (
    ('loss', [('train', 'train_loss'), ('val', 'val_loss'), ('val EMA', 'ema_loss')]),
    ('Acc@1', [('model', 'val_acc1'), ('EMA', 'ema_acc1')]),
    ('learning rate', [('lr', 'lr')]),
)


def get_arguments():
    return argument_parser(__doc__, flags=(), extra={
        'save': dict(metavar='SAVE', help=f'the run folder holding {METRICS_FILE}'),
        '-out': dict(default=None, help='PNG to write (default: SAVE/metrics.png)'),
        '-size': dict(type=int, nargs=2, default=(1500, 450), metavar=('WIDTH', 'HEIGHT'),
                      help='pixels of the whole picture'),
    }).parse_args()


def plot(records, size):
    """The RGB PIL image (size (width, height)) of the CHARTS of epoch records, side by side."""
    width, height = size
    picture = Image.new('RGB', size, (255, 255, 255))
    epochs = [record['epoch'] for record in records]
    for i, (title, keys) in enumerate(CHARTS):
        left, right = i * width // len(CHARTS), (i + 1) * width // len(CHARTS)
        series = [(label, epochs, [record.get(key) for record in records]) for label, key in keys]
        picture.paste(line_chart((right - left, height), title, 'epoch', series), (left, 0))
    return picture


def main():
    args = get_arguments()
    width, height = args.size
    if width < 300 or height < 150:
        raise UserError(f'-size {width} {height}: expected at least 300 x 150 pixels')
    records = read_records(args.save)
    if not records:
        raise UserError(f"metrics file '{os.path.join(args.save, METRICS_FILE)}' holds no epoch record yet")
    out = args.out or os.path.join(args.save, 'metrics.png')
    save_png(plot(records, (width, height)), out)
    print(out)


if __name__ == '__main__':
    run_command(main)
