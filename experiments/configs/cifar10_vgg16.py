"""VGG-16 with BatchNorm on CIFAR-10 (cfg D, 14.7M params ordinary).

Recipe: SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4, batch 128, cosine over 200 epochs
after 1 warmup epoch. CSR: `t2` (every 3x3 conv after the stem with T=2);
`--config.csr=none` for the ordinary network.
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
    config = cifar10_common.cifar10_config()
    config.model = "vgg16_cifar"
    config.csr = "t2"
    config.weight_decay = 5e-4
    return common.finalize(config, arg)
