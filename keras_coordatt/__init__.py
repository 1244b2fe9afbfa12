"""keras-coordatt: Coordinate Attention (CVPR 2021) for Keras 3."""

from keras_coordatt.quiet import quiet_imports as _quiet_imports
from keras_coordatt.quiet import running_command_line as _running_command_line

# As the `keras-coordatt` command, TensorFlow's C++ start-up logs are hidden
# (they are printed on import, here); as a library, nothing is changed.
with _quiet_imports(verbose=not _running_command_line()):
    from keras_coordatt.applications import MobileNetV2CA
    from keras_coordatt.applications import MobileNeXtCA
    from keras_coordatt.applications import decode_predictions
    from keras_coordatt.applications import preprocess_input
    from keras_coordatt.insertion import add_attention
    from keras_coordatt.layers import CBAM
    from keras_coordatt.layers import CoordinateAttention
    from keras_coordatt.layers import EfficientLocalAttention
    from keras_coordatt.layers import SimpleCoordAttention
    from keras_coordatt.layers import SqueezeExcitation
    from keras_coordatt.layers import StripAttention
    from keras_coordatt.utils.after_import import when_imported as _when_imported

__version__ = "0.1.0"


def _register_hub_classes():
    import keras_coordatt.hub  # noqa: F401 - registers the keras-hub classes


# Saved keras-hub presets and `.keras` files of our networks name classes
# like `keras_coordatt>MobileNetV2CABackbone`; they are registered as soon as
# keras-hub is imported (by the user, or by Keras while loading such a
# file), without importing keras-hub here.
_when_imported("keras_hub", _register_hub_classes)

__all__ = [
    "CBAM",
    "CoordinateAttention",
    "EfficientLocalAttention",
    "MobileNetV2CA",
    "MobileNeXtCA",
    "SimpleCoordAttention",
    "SqueezeExcitation",
    "StripAttention",
    "add_attention",
    "decode_predictions",
    "preprocess_input",
]
