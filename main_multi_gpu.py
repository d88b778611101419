"""Train or evaluate PiT in N processes with paddle.distributed: the same `main` as main_single_gpu.py.

One node, N processes (GPUs, or the CPU over GLOO when paddle has no GPU):
    python main_multi_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -resume auto
Started by paddle's launcher instead (also multi-node; run the same command on every node):
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --nproc_per_node 4 \\
        main_multi_gpu.py -cfg configs/pit_b.yaml -data_path /dataset/imagenet -resume auto

The launcher checks the config once, takes SAVE's run lock for the run, starts the processes, passes SIGTERM and
SIGINT on to them, and reports the first that fails (cli.launch).
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import cli
import training

if __name__ == '__main__':
    cli.launch(training.main, cli.argument_parser(__doc__).parse_args())
