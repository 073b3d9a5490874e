"""DenseNet-40 (growth 12) on CIFAR-10 (1.02M params ordinary).

Recipe after Huang et al. 2017: SGD lr 0.1, Nesterov momentum 0.9, weight decay 1e-4, batch 64,
300 epochs (cosine instead of their step decay at 50%/75%). CSR: `t2` (dense-layer 3x3 and
transition convs with T=2); `--config.csr=none` for the ordinary network.
"""

from experiments.configs import cifar10_common, common


def get_config(arg=None):
    config = cifar10_common.cifar10_config()
    config.model = "densenet40"
    config.csr = "t2"
    config.batch_size = 64
    config.num_epochs = 300.0
    config.weight_decay = 1e-4
    config.eval_every_steps = 781 * 5  # About every 5 epochs (781 steps per epoch at batch 64).
    config.checkpoint_every_steps = 781 * 5
    return common.finalize(config, arg)
