"""ResNet-50 on ImageNet (torchvision layout, 25.6M params ordinary).

Recipe: 90 epochs, batch 1024, lr 0.4 (0.1 per 256), Nesterov momentum 0.9, weight decay 1e-4,
5 warmup epochs + cosine, label smoothing 0.1, bfloat16 compute. CSR: `t2` (bottleneck 3x3 and
1x1 reduce convs with T=2; the widening 1x1 convs only where CSR is smaller);
`--config.csr=none` for the ordinary network.
"""

from experiments.configs import imagenet_common


def get_config(arg=None):
    config = imagenet_common.imagenet_config()
    config.model = "resnet50"
    config.csr = "t2"
    return imagenet_common.finalize(config, arg)
