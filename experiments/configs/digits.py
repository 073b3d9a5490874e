"""The default: a CSR ResNet-20 on scikit-learn's digits, trained in about a minute on a CPU.

`python -m experiments.train` runs this. Digits (1,437 train / 360 test real 8x8 images, shipped
with scikit-learn) needs no download and no TensorFlow; images are upsampled to 16x16 so the
network's two stride-2 stages still see a spatial map. ResNet-20 with the `t2` preset turns every
3x3 block conv into a CSR-Conv with T=2. Half the standard widths (8/16/32 instead of 16/32/64)
keep a CPU run short: the full-width network reaches about the same accuracy (0.989 in 12 epochs)
for 2.5x the compute. `--config.model_overrides.widths='(16, 32, 64)'` trains it.
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.dataset = 'digits'
  config.image_size = 16
  config.model = 'resnet20'
  config.csr = 't2'
  config.model_overrides.widths = (8, 16, 32)
  config.batch_size = 64
  config.num_epochs = 15.0
  config.learning_rate = 0.1
  config.nesterov = True
  config.weight_decay = 5e-4
  config.schedule = 'cosine'
  config.warmup_epochs = 1.0
  config.log_every_steps = 20
  config.eval_every_steps = 110  # Every 5 epochs (22 steps per epoch).
  config.checkpoint_every_steps = 110
  return common.finalize(config, arg)
