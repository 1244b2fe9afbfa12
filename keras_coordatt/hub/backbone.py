"""keras-hub backbones built from the application constructors.

A backbone is the network without its classifier (`include_top=False`), its
graph taken whole from the registered constructor (`MobileNetV2CA`,
`MobileNeXtCA`, or any `register_application`'d one), with the same layer
names, so a weights file of the application loads into it by name. Its
`pyramid_outputs` are the application's (`applications.pyramid`). One
subclass per application is made by `keras_coordatt.hub.factory`.
"""

import contextlib

import keras
from keras_hub.models import Backbone

from keras_coordatt.applications.arguments import check_file_architecture


@contextlib.contextmanager
def dtype_policy_scope(dtype):
    """Keras' global dtype policy set to `dtype` (None: unchanged) inside.

    Every layer an application constructor makes then takes the policy at
    its creation (sublayers built later take it from their parent), as
    keras-hub's backbones pass `dtype=` to each layer: variables are created
    in the policy's variable dtype. Setting a policy on layers afterwards
    leaves float32 variables under a float16 / bfloat16 compute dtype.
    """
    if dtype is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras.dtype_policies.get(dtype))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class ApplicationBackbone(Backbone):
    """A `Backbone` whose graph is an application network's, without top.

    Subclasses set `application`, the constructor (`hub.factory`).

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
        if type(self).application is None:
            raise ValueError(
                "ApplicationBackbone is built through a subclass with an "
                "`application` (keras_coordatt.hub.hub_classes(name)."
                f"backbone). Received: {type(self).__name__}")
        with dtype_policy_scope(dtype):
            network = type(self).application(
                input_shape=tuple(image_shape), alpha=alpha,
                include_top=False, weights=None, reduction=reduction,
                attention=attention,
            )
        super().__init__(inputs=network.inputs[0],
                         outputs=network.outputs[0], dtype=dtype, **kwargs)
        self.pyramid_outputs = network.pyramid_outputs
        self.alpha = alpha
        self.reduction = reduction
        self.attention = attention
        self.image_shape = tuple(image_shape)

    @classmethod
    def from_config(cls, config):
        # A preset's config.json is untrusted: bounded before building.
        check_file_architecture(
            f"the config of {cls.__name__}", alpha=config.get("alpha"),
            image_shape=config.get("image_shape"))
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update({
            "alpha": self.alpha,
            "reduction": self.reduction,
            "attention": self.attention,
            "image_shape": self.image_shape,
        })
        return config
