"""The authors' CIFAR-10 MobileNetV2 with their CSR configuration and their training recipe.

The authors' notebook (docs/backbones.md §3): SGD lr 0.05, momentum 0.9 (not Nesterov), weight
decay 5e-4 on every parameter (PyTorch SGD's coupled decay, BatchNorm scales and the classifier
bias included), batch 128, lr halved every 30 epochs over 600 epochs (0.05 -> 0.05 / 2**19 in
the last 30), random crop 32 (4-pixel padding) + horizontal flip, ImageNet mean/std normalisation
(the cifar10 pipeline's augmentation), cross-entropy without label smoothing, no warmup. The
network initialises as theirs (`mobilenetv2_cifar`'s default: ordinary convs N(0, sqrt(2 /
(k k C_out))), CSR kernels and classifier PyTorch's defaults) and its BatchNorm tracks the
unbiased running variance as PyTorch's does (`torch_batchnorm_stats`). CSR `reference`: every
block's 1x1 expand conv with T=3 and 1x1 project conv with T=4 (1,182,272 params);
`--config.csr=none` trains the ordinary network (2,237,770 params). One difference remains: each
epoch drops its last partial batch (50,000 = 390 x 128 + 80) where PyTorch's loader keeps it.
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
    config = cifar10_common.cifar10_config()
    config.model = "mobilenetv2_cifar"
    config.csr = "reference"
    config.model_overrides.torch_batchnorm_stats = True
    config.batch_size = 128
    config.num_epochs = 600.0
    config.learning_rate = 0.05
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 5e-4
    config.weight_decay_min_ndim = 0  # Every parameter, as torch.optim.SGD(weight_decay=5e-4).
    config.label_smoothing = 0.0
    config.schedule = "step"
    config.step_decay_epochs = 30.0
    config.step_decay_factor = 0.5
    config.warmup_epochs = 0.0
    return common.finalize(config, arg)
