r"""Benchmark workload `mnist_mlp`: 2 x 1000 ReLU with dropout 0.5 on MNIST (Kingma & Ba, 6.2).

    adamlab benchmark --workloads mnist_mlp --optimizers adam,sgd,adagrad,rmsprop --trials 16

The paper's multilayer network: two hidden layers of 1000 ReLU units, dropout 0.5, minibatch
128; 10 epochs here (the paper trains longer). Warmup + cosine with a tuned warmup fraction.
Target: validation accuracy >= 0.98, reached by a tuned Adam within the 10 epochs. Sized for
a GPU: 16 trials of 1.8M parameters each take tens of minutes per optimizer on 2 CPU cores.
Needs the MNIST files prepared by TFDS (see bench_mnist_logreg.py).
"""

import pathlib

import ml_collections

from adamlab.config_dict import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(_HERE / "mnist.py")
    config.model.name = "mlp"
    config.model.hidden = (1000, 1000)
    config.model.dropout_rate = 0.5
    config.train.num_epochs = 10.0  # 10 x 421 steps.
    config.train.log_every_steps = 211  # Half an epoch.
    config.train.eval_every_steps = 211  # Time-to-target's resolution: half an epoch.
    config.train.checkpoint_every_steps = 1055
    config.benchmark = bench = load_config_file(_HERE / "bench_digits_cnn.py").benchmark
    bench.workload = "mnist_mlp"
    bench.target = 0.98
    return config
