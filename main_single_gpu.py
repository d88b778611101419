"""Train or evaluate PiT in one process (one GPU, or the CPU). main_multi_gpu.py runs the same `main` in N.

    python main_single_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -resume auto
    python main_single_gpu.py -eval -pretrained output/train/checkpoint-best -data_path /dataset/imagenet
    python main_single_gpu.py -eval -resume auto -save_path output/train -data_path /dataset/imagenet -ema

A checkpoint of this repo (or converted official weights) describes its model and preprocessing, so -eval
needs no -cfg; a given -cfg/-opts still applies, and one that contradicts the checkpoint's model is an error.
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import cli
import training

if __name__ == '__main__':
    cli.run_training(training.main, cli.argument_parser(__doc__).parse_args())
