"""Keras layers: the coordinate attention block."""

from keras_coordatt.layers.coordinate_attention import CoordinateAttention

__all__ = ["CoordinateAttention"]
