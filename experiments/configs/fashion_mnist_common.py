"""The Fashion-MNIST part every fashion_mnist_* config shares: data, recipe, bookkeeping.

Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, read from the IDX files of Debian's
`dataset-fashion-mnist` package, no TensorFlow) zero-padded to 32x32 by default so the CIFAR
backbones keep their 32 -> 16 -> 8 stages; `--config.image_size=28` trains on native images.

Recipe (the same for every backbone, ordinary and CSR, so that only the convolutions differ):
SGD with Nesterov momentum 0.9, peak lr 0.1 for batch 128, 1 linear warmup epoch then cosine to 0,
label smoothing 0.1, weight decay 5e-4 on kernels, 30 epochs. Short cosine schedules with
smoothing reach ~94-95% on Fashion-MNIST with CIFAR ResNets; 30 epochs keeps a GPU run to minutes
and a CPU run of ResNet-20 to hours, and `--config.num_epochs=N` shortens it consistently (the
cosine follows the length).
"""

from experiments.configs import common

STEPS_PER_EPOCH = 60_000 // 128  # 468 at batch 128.


def fashion_mnist_config():
    config = common.base_config()
    config.dataset = "fashion_mnist"
    config.image_size = 32
    config.batch_size = 128
    config.eval_batch_size = 500  # Divides the 10,000 test images: no padded last batch.
    config.num_epochs = 30.0
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.nesterov = True
    config.weight_decay = 5e-4
    config.label_smoothing = 0.1
    config.schedule = "cosine"
    config.warmup_epochs = 1.0
    config.log_every_steps = 50
    config.eval_every_steps = STEPS_PER_EPOCH * 2  # About every 2 epochs.
    config.checkpoint_every_steps = (
        STEPS_PER_EPOCH  # About every epoch: a killed CPU run loses little.
    )
    config.keep_checkpoints = 2
    return config
