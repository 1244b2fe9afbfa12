"""keras-hub backbones built from the application constructors.

A backbone is the network without its classifier (`include_top=False`), its
graph taken whole from `MobileNetV2CA` / `MobileNeXtCA`, with the same layer
names, so a weights file of the application loads into it by name. Its
`pyramid_outputs` are the application's (`applications.pyramid`).
"""

import keras
from keras_hub.models import Backbone

from keras_coordatt.applications.mobilenet_v2_ca import MobileNetV2CA
from keras_coordatt.applications.mobilenext_ca import MobileNeXtCA


class _ApplicationBackbone(Backbone):
    """A `Backbone` whose graph is an application network's, without top.

    Args:
        alpha: width multiplier.
        reduction: reduction ratio of the attention blocks (None: the
            kind's default).
        attention: `"ca"`, `"se"`, `"cbam"` or None.
        image_shape: input shape, `(None, None, 3)` for any size.
        dtype: the dtype policy of the layers.
    """

    application = None

    def __init__(self, alpha=1.0, reduction=None, attention="ca",
                 image_shape=(None, None, 3), dtype=None, **kwargs):
        network = type(self).application(
            input_shape=tuple(image_shape), alpha=alpha, include_top=False,
            weights=None, reduction=reduction, attention=attention,
        )
        if dtype is not None:
            for layer in network.layers:
                layer.dtype_policy = keras.dtype_policies.get(dtype)
        super().__init__(inputs=network.inputs[0],
                         outputs=network.outputs[0], dtype=dtype, **kwargs)
        self.pyramid_outputs = network.pyramid_outputs
        self.alpha = alpha
        self.reduction = reduction
        self.attention = attention
        self.image_shape = tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "alpha": self.alpha,
            "reduction": self.reduction,
            "attention": self.attention,
            "image_shape": self.image_shape,
        })
        return config


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNetV2CABackbone(_ApplicationBackbone):
    """MobileNetV2 + coordinate attention as a keras-hub `Backbone`.

    >>> backbone = MobileNetV2CABackbone(alpha=0.35)
    >>> sorted(backbone.pyramid_outputs)
    ['P1', 'P2', 'P3', 'P4', 'P5']

    Reference:
    - [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    """

    application = MobileNetV2CA


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNeXtCABackbone(_ApplicationBackbone):
    """MobileNeXt + coordinate attention as a keras-hub `Backbone`.

    Reference:
    - [Rethinking Bottleneck Structure for Efficient Mobile Network Design](
        https://arxiv.org/abs/2007.02269) (ECCV 2020)
    """

    application = MobileNeXtCA
