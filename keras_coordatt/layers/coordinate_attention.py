"""The coordinate attention block (Hou, Zhou, Feng, CVPR 2021)."""

import keras
from keras import ops

from keras_coordatt.layers.common import data_format_or_default
from keras_coordatt.layers.common import input_channels
from keras_coordatt.layers.common import positive_int


@keras.saving.register_keras_serializable(package="keras_coordatt")
class CoordinateAttention(keras.layers.Layer):
    """Coordinate attention: channel gates factorised along height and width.

    The block needs only the channel count of its input, which it reads when it
    is built. It average-pools the feature map along each spatial direction
    (one strip of H rows, one strip of W columns), encodes both strips with a
    shared 1x1 convolution (with bias) + BatchNorm + hard-swish into
    `max(min_channels, channels // reduction)` channels, and turns each strip
    back into `channels` sigmoid gates with its own 1x1 convolution (with
    bias). The output is `inputs * a_h * a_w`, so every position is reweighted
    by a gate that knows its row and one that knows its column. In training
    the BatchNorm statistics are taken over both strips together, as in the
    authors' network; at inference the strips are processed apart (no concat
    or split, which keeps converted graphs small). Hard-swish is computed as
    `y * relu6(y + 3)` with its 1/6 folded into the gate kernels: the same
    numbers, and no HARD_SWISH op in converted graphs, which XNNPACK does not
    run in int8 (each one split the int8 graph between delegate and CPU
    kernels: 18 partitions instead of MobileNetV2's 2 in MobileNetV2CA).

    Args:
        reduction: int >= 1, the channel reduction ratio of the shared
            encoding. Defaults to 32, as in the paper.
        min_channels: int >= 1, the smallest width of the shared encoding.
            Defaults to 8.
        activation: activation of the shared encoding (name or callable).
            Defaults to `"hard_swish"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4D tensor `(batch, H, W, C)` (channels_last) or
        `(batch, C, H, W)` (channels_first); H and W may be unknown.
    Output shape: same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = CoordinateAttention(reduction=16)(x)

    Reference:
    - [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    """

    def __init__(
        self,
        reduction=32,
        min_channels=8,
        activation="hard_swish",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = positive_int("reduction", reduction)
        self.min_channels = positive_int("min_channels", min_channels)
        self.activation = keras.activations.get(activation)
        self.data_format = data_format_or_default(data_format)
        self.channels = None
        self.hidden_channels = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = input_channels(
            "CoordinateAttention", input_shape, self.data_format
        )
        self.hidden_channels = max(
            self.min_channels, self.channels // self.reduction
        )
        name = keras.activations.serialize(self.activation)
        self._split_hard_swish = name in ("hard_swish", "hard_silu")
        # The sublayers work on pooled strips laid out channels_last, whatever
        # the layer's data format: TF's CPU kernels have no NCHW convolution,
        # and the strips are tiny, so transposing them costs nothing.
        def conv(filters, name):
            return keras.layers.Conv2D(
                filters,
                1,
                use_bias=True,
                data_format="channels_last",
                name=name,
                dtype=self.dtype_policy,
            )

        self.conv = conv(self.hidden_channels, "conv")
        self.bn = keras.layers.BatchNormalization(
            axis=-1,
            momentum=0.9,
            epsilon=1e-5,
            name="bn",
            dtype=self.dtype_policy,
        )
        self.conv_h = conv(self.channels, "conv_h")
        self.conv_w = conv(self.channels, "conv_w")
        strip = (None, None, 1, self.channels)
        self.conv.build(strip)
        hidden = self.conv.compute_output_shape(strip)
        self.bn.build(hidden)
        self.conv_h.build(hidden)
        self.conv_w.build(hidden)
        channel_spec = {(-1 if self.data_format == "channels_last" else 1):
                        self.channels}
        self.input_spec = keras.layers.InputSpec(ndim=4, axes=channel_spec)

    def _encode(self, pooled_h, pooled_w, training):
        """Shared conv + BN + activation on the strips (B, H, 1, C) and
        (B, 1, W, C)."""
        y_h = self.conv(pooled_h)
        y_w = self.conv(pooled_w)
        if training and self.bn.trainable:
            # Joint batch statistics over the H + W positions of the batch:
            # lay the W strip out like the H strip, concatenate, split back.
            length_h = ops.shape(y_h)[1]
            joint = ops.concatenate(
                [y_h, ops.transpose(y_w, (0, 2, 1, 3))], axis=1
            )
            joint = self.bn(joint, training=True)
            y_h = joint[:, :length_h]
            y_w = ops.transpose(joint[:, length_h:], (0, 2, 1, 3))
        else:
            y_h = self.bn(y_h, training=False)
            y_w = self.bn(y_w, training=False)
        if self._split_hard_swish:  # 6 x hard_swish; see _gate
            return y_h * ops.relu6(y_h + 3.0), y_w * ops.relu6(y_w + 3.0)
        return self.activation(y_h), self.activation(y_w)

    def _gate(self, conv, encoded):
        """`sigmoid(conv(activation(y)))` from `_encode`'s output."""
        if not self._split_hard_swish:
            return ops.sigmoid(conv(encoded))
        # The encoding is 6 x hard_swish(y): the 1/6 goes into the kernel
        # (a constant of the converted graph). The variables are read raw,
        # outside `conv`'s call and its autocast, so they are cast to the
        # encoding's dtype (float16 / bfloat16 under those policies).
        kernel = ops.cast(conv.kernel, encoded.dtype) * (1.0 / 6.0)
        logits = ops.conv(encoded, kernel, data_format="channels_last")
        return ops.sigmoid(logits + ops.cast(conv.bias, logits.dtype))

    def _gates(self, inputs, training=None):
        """Returns the two sigmoid gates, broadcastable against `inputs`."""
        first = self.data_format == "channels_first"
        # channels_last: (B, H, 1, C) and (B, 1, W, C); no transpose at all
        # at inference. channels_first strips are moved channels-last.
        pooled_h = ops.mean(inputs, axis=3 if first else 2, keepdims=True)
        pooled_w = ops.mean(inputs, axis=2 if first else 1, keepdims=True)
        if first:
            pooled_h = ops.transpose(pooled_h, (0, 2, 3, 1))
            pooled_w = ops.transpose(pooled_w, (0, 2, 3, 1))
        y_h, y_w = self._encode(pooled_h, pooled_w, training)
        gate_h = self._gate(self.conv_h, y_h)
        gate_w = self._gate(self.conv_w, y_w)
        if first:
            gate_h = ops.transpose(gate_h, (0, 3, 1, 2))  # (B, C, H, 1)
            gate_w = ops.transpose(gate_w, (0, 3, 1, 2))  # (B, C, 1, W)
        return gate_h, gate_w

    def call(self, inputs, training=None):
        gate_h, gate_w = self._gates(inputs, training=training)
        return inputs * gate_h * gate_w

    def attention_maps(self, inputs, training=False):
        """Returns the gates `(a_h, a_w)` the layer applies to `inputs`.

        Args:
            inputs: a batch in the layer's data format.
            training: whether BatchNorm uses batch statistics.

        Returns:
            `a_h` of shape `(B, H, 1, C)` and `a_w` of shape `(B, 1, W, C)`
            (channels_last) or `(B, C, H, 1)` and `(B, C, 1, W)`
            (channels_first), with values in (0, 1). Their product is the
            per-position gate, `call(x) == x * a_h * a_w`.
        """
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not self.built:
            self.build(tuple(inputs.shape))
        return self._gates(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "min_channels": self.min_channels,
                "activation": keras.activations.serialize(self.activation),
                "data_format": self.data_format,
            }
        )
        return config
