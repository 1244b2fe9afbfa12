"""Keras layers: coordinate attention and the SE and CBAM baselines."""

from keras_coordatt.layers.cbam import CBAM
from keras_coordatt.layers.coordinate_attention import CoordinateAttention
from keras_coordatt.layers.squeeze_excitation import SqueezeExcitation

__all__ = ["CBAM", "CoordinateAttention", "SqueezeExcitation"]
