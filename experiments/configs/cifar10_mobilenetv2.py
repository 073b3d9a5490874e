"""The authors' CIFAR-10 MobileNetV2 with their CSR configuration and training recipe.

The authors' notebook (docs/backbones.md §3): SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 128, lr halved
every 30 epochs, random crop 32 (4-pixel padding) + horizontal flip, ImageNet mean/std
normalisation (the cifar10 pipeline's augmentation), cross-entropy. CSR `reference`: every
block's 1x1 expand conv with T=3 and 1x1 project conv with T=4. The number of epochs is not
stated; 200 (lr 0.05 -> 0.05 / 2**6 at the end) is used. The reference decays every parameter
(PyTorch SGD); here decay applies to kernels only unless `--config.weight_decay_min_ndim=0`.
`--config.csr=none` trains the ordinary network (2,237,770 params).
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
  config = cifar10_common.cifar10_config()
  config.model = 'mobilenetv2_cifar'
  config.csr = 'reference'
  config.batch_size = 128
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.schedule = 'step'
  config.step_decay_epochs = 30.0
  config.step_decay_factor = 0.5
  config.warmup_epochs = 0.0
  config.num_epochs = 200.0
  return common.finalize(config, arg)
