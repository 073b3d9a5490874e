"""The CIFAR MobileNetV2 on Fashion-MNIST, with the authors' CSR configuration.

Ordinary: 2,237,194 params. CSR default `reference` (the authors' notebook: every block's 1x1
expand conv with T=3 and 1x1 project conv with T=4): 1,181,696 params, 47% fewer.
`--config.csr=none` trains the ordinary network. The recipe is the shared Fashion-MNIST one
(not the authors' CIFAR step schedule), so ordinary and CSR compare like for like with the
ResNets; about 7x ResNet-20's compute: a GPU run.
"""

from experiments.configs import common, fashion_mnist_common


def get_config(arg=None):
    config = fashion_mnist_common.fashion_mnist_config()
    config.model = "mobilenetv2_cifar"
    config.csr = "reference"
    return common.finalize(config, arg)
