"""The convolutional block attention module (Woo et al., ECCV 2018)."""

import keras
from keras import ops

from keras_coordatt.layers.common import conv as _conv
from keras_coordatt.layers.common import data_format_or_default as _data_format
from keras_coordatt.layers.common import input_channels as _input_channels
from keras_coordatt.layers.common import positive_int as _positive_int
from keras_coordatt.layers.common import to_channels_first as _to_channels_first
from keras_coordatt.layers.common import to_channels_last as _to_channels_last


def _odd_kernel_size(value):
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1
            or value % 2 == 0):
        raise ValueError(
            "`kernel_size` must be an odd integer >= 1. "
            f"Received: kernel_size={value!r}"
        )
    return value


@keras.saving.register_keras_serializable(package="keras_coordatt")
class CBAM(keras.layers.Layer):
    """CBAM: a channel gate, then a spatial gate.

    The block needs only the channel count of its input, which it reads when it
    is built. Channel attention: the average- and the max-pooled descriptors
    of the feature map go through one shared MLP (1x1 convolutions with bias,
    `channels -> hidden`, activation, `hidden -> channels`), are summed and
    turned into per-channel sigmoid gates. Spatial attention, on the
    channel-gated map: its channel-wise mean and max (in this order, as in the
    paper's equation and timm) are concatenated into a 2-channel map, a
    `kernel_size` x `kernel_size` convolution ("same" padding) makes one
    channel of it and a sigmoid makes per-position gates. The output is
    `inputs * channel_gate * spatial_gate`.

    As in the authors' code, the spatial convolution has no bias and is
    followed by a BatchNorm (momentum 0.99 in Keras terms, their PyTorch
    momentum 0.01; epsilon 1e-5); `spatial_batchnorm=False` gives the paper's
    plain `sigmoid(conv(...))` with a bias instead. The bottleneck width is
    `hidden_channels = max(min_channels, channels // reduction)`, the rule of
    `CoordinateAttention`.

    The default `reduction=24` is the one that reproduces the 3.89M parameters
    the coordinate attention paper quotes for MobileNetV2 + CBAM with the
    blocks at CA's places (after the depthwise convolution of every inverted
    residual block with expansion > 1): MobileNetV2 at alpha 1.0 has 3,504,872
    trainable parameters, its 16 CBAM blocks add 386,864 (the SE-like MLP's
    385,264, and 7*7*2 + 2 per block for the spatial convolution and its
    BatchNorm), 3,891,736 in all (3,891,720 with `spatial_batchnorm=False`).
    Reductions 4, 8, 16 and 32 give 5,770,968, 4,642,272, 4,078,310 and
    3,801,048.

    Args:
        reduction: int >= 1, the channel reduction ratio `r` of the shared
            MLP. Defaults to 24 (see above; the CBAM paper uses 16 in
            ResNets).
        kernel_size: odd int >= 1, the size of the spatial convolution.
            Defaults to 7, as in the paper.
        min_channels: int >= 1, the smallest bottleneck width. Defaults to 8.
        spatial_batchnorm: whether the spatial convolution is followed by a
            BatchNorm (and has no bias), as in the authors' code. Defaults to
            True.
        activation: activation of the shared MLP (name or callable).
            Defaults to `"relu"`, as in the paper.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4D tensor `(batch, H, W, C)` (channels_last) or
        `(batch, C, H, W)` (channels_first); H and W may be unknown.
    Output shape: same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = CBAM(reduction=16, kernel_size=7)(x)

    Reference:
    - [CBAM: Convolutional Block Attention Module](
        https://arxiv.org/abs/1807.06521) (ECCV 2018)
    """

    def __init__(
        self,
        reduction=24,
        kernel_size=7,
        min_channels=8,
        spatial_batchnorm=True,
        activation="relu",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = _positive_int("reduction", reduction)
        self.kernel_size = _odd_kernel_size(kernel_size)
        self.min_channels = _positive_int("min_channels", min_channels)
        if not isinstance(spatial_batchnorm, bool):
            raise ValueError(
                "`spatial_batchnorm` must be True or False. "
                f"Received: spatial_batchnorm={spatial_batchnorm!r}"
            )
        self.spatial_batchnorm = spatial_batchnorm
        self.activation = keras.activations.get(activation)
        self.data_format = _data_format(data_format)
        self.channels = None
        self.hidden_channels = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = _input_channels("CBAM", input_shape, self.data_format)
        self.hidden_channels = max(
            self.min_channels, self.channels // self.reduction
        )
        policy = self.dtype_policy
        self.mlp_reduce = _conv(self.hidden_channels, policy, "mlp_reduce")
        self.mlp_expand = _conv(self.channels, policy, "mlp_expand")
        self.spatial_conv = _conv(
            1, policy, "spatial_conv", kernel_size=self.kernel_size,
            use_bias=not self.spatial_batchnorm,
        )
        pooled = (None, 1, 1, self.channels)
        self.mlp_reduce.build(pooled)
        self.mlp_expand.build(self.mlp_reduce.compute_output_shape(pooled))
        self.spatial_conv.build((None, None, None, 2))
        self.spatial_bn = None
        if self.spatial_batchnorm:
            self.spatial_bn = keras.layers.BatchNormalization(
                axis=-1,
                momentum=0.99,
                epsilon=1e-5,
                name="spatial_bn",
                dtype=policy,
            )
            self.spatial_bn.build((None, None, None, 1))
        channel_axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: self.channels}
        )

    def _mlp(self, descriptor):
        return self.mlp_expand(self.activation(self.mlp_reduce(descriptor)))

    def _channel_gate(self, inputs):
        """`sigmoid(mlp(avg_pool(x)) + mlp(max_pool(x)))`, broadcastable."""
        first = self.data_format == "channels_first"
        axes = (2, 3) if first else (1, 2)
        avg = ops.mean(inputs, axis=axes, keepdims=True)
        max_ = ops.max(inputs, axis=axes, keepdims=True)
        if first:  # (B, C, 1, 1) -> (B, 1, 1, C)
            avg, max_ = _to_channels_last(avg), _to_channels_last(max_)
        gate = ops.sigmoid(self._mlp(avg) + self._mlp(max_))
        return _to_channels_first(gate) if first else gate

    def _spatial_gate(self, x, training=None):
        """`sigmoid(conv([mean_c(x); max_c(x)]))`, broadcastable."""
        first = self.data_format == "channels_first"
        axis = 1 if first else -1
        maps = ops.concatenate(
            [ops.mean(x, axis=axis, keepdims=True),
             ops.max(x, axis=axis, keepdims=True)],
            axis=axis,
        )
        if first:  # (B, 2, H, W) -> (B, H, W, 2): two channels, cheap
            maps = _to_channels_last(maps)
        logits = self.spatial_conv(maps)
        if self.spatial_bn is not None:
            logits = self.spatial_bn(logits, training=training)
        gate = ops.sigmoid(logits)
        return _to_channels_first(gate) if first else gate

    def _gates(self, inputs, training=None):
        channel_gate = self._channel_gate(inputs)
        spatial_gate = self._spatial_gate(inputs * channel_gate, training)
        return channel_gate, spatial_gate

    def call(self, inputs, training=None):
        x = inputs * self._channel_gate(inputs)
        return x * self._spatial_gate(x, training=training)

    def attention_maps(self, inputs, training=False):
        """Returns the gates `(channel_gate, spatial_gate)` the layer applies.

        Args:
            inputs: a batch in the layer's data format.
            training: whether the spatial BatchNorm uses batch statistics.

        Returns:
            `channel_gate` of shape `(B, 1, 1, C)` and `spatial_gate` of shape
            `(B, H, W, 1)` (channels_last) or `(B, C, 1, 1)` and
            `(B, 1, H, W)` (channels_first), values in (0, 1). The spatial
            gate is computed on the channel-gated input, and
            `call(x) == x * channel_gate * spatial_gate`.
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
                "kernel_size": self.kernel_size,
                "min_channels": self.min_channels,
                "spatial_batchnorm": self.spatial_batchnorm,
                "activation": keras.activations.serialize(self.activation),
                "data_format": self.data_format,
            }
        )
        return config
