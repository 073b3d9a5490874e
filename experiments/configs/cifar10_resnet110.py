"""ResNet-110 on CIFAR-10 (He et al. 2016, option-A shortcuts, 1.73M params ordinary).

Recipe as ResNet-56 (SGD lr 0.1, Nesterov momentum 0.9, wd 1e-4, batch 128, cosine, 200 epochs)
with a 2-epoch warmup: He et al. note ResNet-110 needs a gentler start (they train at lr 0.01
until the training error is below 80%). CSR: `t2`; `--config.csr=none` for the ordinary net.
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
    config = cifar10_common.cifar10_config()
    config.model = "resnet110"
    config.csr = "t2"
    config.weight_decay = 1e-4
    config.warmup_epochs = 2.0
    return common.finalize(config, arg)
