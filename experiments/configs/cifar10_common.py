"""The CIFAR-10 part every cifar10_* config shares: data, batch, length, bookkeeping."""

from experiments.configs import common


def cifar10_config():
    """CIFAR-10 at 32x32 (tfds 'cifar10'; prepare once with `python -m experiments.prepare_data
    cifar10`), batch 128, SGD momentum 0.9, cosine over 200 epochs: the common recipe for
    CIFAR ResNets/VGG with BatchNorm. The model files change what differs."""
    config = common.base_config()
    config.dataset = "cifar10"
    config.image_size = 32
    config.batch_size = 128
    config.num_epochs = 200.0
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.nesterov = True
    config.weight_decay = 5e-4
    config.schedule = "cosine"
    config.warmup_epochs = 1.0
    config.log_every_steps = 100
    config.eval_every_steps = 390 * 5  # About every 5 epochs (390 steps per epoch at batch 128).
    config.checkpoint_every_steps = 390 * 5
    return config
