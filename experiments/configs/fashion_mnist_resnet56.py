"""ResNet-56 on Fashion-MNIST (He et al. 2016 CIFAR ResNet, option-A shortcuts, 1 input channel).

Ordinary: 852,730 params. CSR default `t2` (every 3x3 block conv with T=2): 434,662 params, 49%
fewer. `--config.csr=none` trains the ordinary network with the same recipe and seed. About 3x
the compute of ResNet-20: a GPU run (minutes), not a CPU one.
"""

from experiments.configs import common, fashion_mnist_common


def get_config(arg=None):
    config = fashion_mnist_common.fashion_mnist_config()
    config.model = "resnet56"
    config.csr = "t2"
    return common.finalize(config, arg)
