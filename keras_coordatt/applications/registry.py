"""The application networks by name: the one table that training,
quantization, export and the command lines read.

A network is registered with one line in `APPLICATIONS` (name -> the
`keras.applications`-style constructor). All of them take the same
arguments and the same `preprocess_input` (the authors' torch mode).
"""

from keras_coordatt.applications.imagenet import preprocess_input
from keras_coordatt.applications.mobilenet_v2_ca import MobileNetV2CA
from keras_coordatt.applications.mobilenext_ca import MobileNeXtCA

APPLICATIONS = {
    "mobilenetv2_ca": MobileNetV2CA,
    "mobilenext_ca": MobileNeXtCA,
}


def application_names():
    """The registered names (`("mobilenetv2_ca", "mobilenext_ca")`)."""
    return tuple(APPLICATIONS)


def get_application(name):
    """Returns the constructor registered under `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the names.
    """
    if name not in APPLICATIONS:
        raise ValueError(
            f"Unknown model. Received: model={name!r}; accepted: "
            f"{', '.join(APPLICATIONS)}"
        )
    return APPLICATIONS[name]


def preprocess_for(name):
    """The `preprocess_input` of model `name` ([0, 255] RGB -> input)."""
    get_application(name)
    return preprocess_input
