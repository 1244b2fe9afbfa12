"""keras-hub image converters with an application's normalisation:
`(x / 255 - mean) / std` (the spec's `mean` / `std`; torchvision's for the
networks of the paper, as `keras_coordatt.preprocess_input`)."""

from keras_hub.layers import ImageConverter

from keras_coordatt.applications.imagenet import IMAGENET_MEAN
from keras_coordatt.applications.imagenet import IMAGENET_STD


def scale_and_offset(mean, std):
    """ImageConverter's `scale`, `offset` for `(x / 255 - mean) / std`."""
    scale = tuple(1.0 / (255.0 * s) for s in std)
    offset = tuple(-m / s for m, s in zip(mean, std))
    return scale, offset


class ApplicationImageConverter(ImageConverter):
    """An `ImageConverter` whose default scale and offset are its class's
    `mean` / `std` (set per application by `hub.factory`)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, image_size=None, scale=None, offset=None, **kwargs):
        default_scale, default_offset = scale_and_offset(self.mean, self.std)
        super().__init__(
            image_size=image_size,
            scale=default_scale if scale is None else scale,
            offset=default_offset if offset is None else offset, **kwargs)
