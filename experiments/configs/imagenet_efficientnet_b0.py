"""EfficientNet-B0 on ImageNet (torchvision layout, 5.3M params ordinary).

The original recipe (RMSProp, 350 epochs, AutoAugment) is adapted to this codebase's SGD: 350
epochs, batch 1024, lr 0.4 (0.1 per 256), Nesterov momentum 0.9, weight decay 4e-5, 5 warmup
epochs + cosine, label smoothing 0.1, bfloat16; dropout and stochastic depth are the model's.
CSR: `t3` (project convs, and expand/head convs where CSR is smaller, with T=3, as the
MobileNetV2 reference uses T=3 on expand convs); `--config.csr=none` for the ordinary network.
"""

from experiments.configs import imagenet_common


def get_config(arg=None):
    config = imagenet_common.imagenet_config()
    config.model = "efficientnet_b0"
    config.csr = "t3"
    config.num_epochs = 350.0
    config.weight_decay = 4e-5
    return imagenet_common.finalize(config, arg)
