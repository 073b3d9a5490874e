"""ResNet-56 on CIFAR-10 (He et al. 2016, option-A shortcuts, 853K params ordinary).

Recipe: SGD lr 0.1, momentum 0.9 (Nesterov), weight decay 1e-4 as in He et al., batch 128,
cosine over 200 epochs after 1 warmup epoch. CSR: `t2` (every block 3x3 conv with T=2);
`--config.csr=none` trains the ordinary network, `--config.csr=t4` the smaller one.
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
    config = cifar10_common.cifar10_config()
    config.model = "resnet56"
    config.csr = "t2"
    config.weight_decay = 1e-4
    return common.finalize(config, arg)
