"""The ImageNet part every imagenet_* config shares.

tfds 'imagenet2012' (prepare once with `python -m experiments.prepare_data imagenet2012`, which
needs the manually downloaded archives), 224x224, global batch 1024, bfloat16 compute (params
float32), SGD Nesterov momentum 0.9 with the linear scaling rule lr = 0.1 * batch / 256, 5 warmup
epochs then cosine, label smoothing 0.1 (Goyal et al. 2017; He et al. 2019, "Bag of Tricks").
A different --config.batch_size keeps --config.learning_rate as is: scale it too (0.1 per 256).
"""

from experiments.configs import common

STEPS_PER_EPOCH_1024 = 1_281_167 // 1024


def imagenet_config():
    config = common.base_config()
    config.dataset = "imagenet2012"
    config.image_size = 224
    config.batch_size = 1024
    config.eval_batch_size = 1024  # Divisible by any power-of-two device count up to 1024.
    config.dtype = "bfloat16"
    config.num_epochs = 90.0
    config.learning_rate = 0.1 * config.batch_size / 256
    config.momentum = 0.9
    config.nesterov = True
    config.weight_decay = 1e-4
    config.label_smoothing = 0.1
    config.schedule = "cosine"
    config.warmup_epochs = 5.0
    config.log_every_steps = 100
    config.eval_every_steps = STEPS_PER_EPOCH_1024 * 5
    config.checkpoint_every_steps = 1000
    return config


def finalize(config, arg):
    """`common.finalize`, plus a smaller image for `runlocal` (224x224 is slow on a CPU) and the
    linear-scaling learning rate of its batch of 8: the full run's 0.4 (batch 1024) with no warmup
    at batch 8 took a ResNet-50's training loss from 7 to 180 in one step and its eval loss to NaN
    on an AMD EPYC CPU."""
    config = common.finalize(config, arg)
    if (arg or "").strip() == "runlocal":
        config.image_size = 64
        config.dtype = "float32"
        config.learning_rate = 0.1 * config.batch_size / 256
    return config
