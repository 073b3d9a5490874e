"""ResNet-20 on Fashion-MNIST (He et al. 2016 CIFAR ResNet, option-A shortcuts, 1 input channel).

Ordinary: 269,434 params. CSR default `t2` (every 3x3 block conv a CSR-Conv with T=2):
141,598 params, 47% fewer (`t3`/`t4` remove more). `--config.csr=none` trains the ordinary
network with the same recipe and seed. The recipe is `fashion_mnist_common`'s;
`:runlocal` is a few-step smoke run on the real files.
"""

from experiments.configs import common, fashion_mnist_common


def get_config(arg=None):
    config = fashion_mnist_common.fashion_mnist_config()
    config.model = "resnet20"
    config.csr = "t2"
    return common.finalize(config, arg)
