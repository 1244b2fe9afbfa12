"""Keras layers: coordinate attention, its family and the SE and CBAM
baselines."""

from keras_coordatt.layers.cbam import CBAM
from keras_coordatt.layers.coordinate_attention import CoordinateAttention
from keras_coordatt.layers.efficient_local_attention import (
    EfficientLocalAttention,
)
from keras_coordatt.layers.simple_coordinate_attention import (
    SimpleCoordAttention,
)
from keras_coordatt.layers.squeeze_excitation import SqueezeExcitation
from keras_coordatt.layers.strip_attention import StripAttention

__all__ = [
    "CBAM",
    "CoordinateAttention",
    "EfficientLocalAttention",
    "SimpleCoordAttention",
    "SqueezeExcitation",
    "StripAttention",
]
