"""The attention kinds of keras-coordatt by name: the one table that the
constructors' `attention=` argument and `add_attention` read.

A kind is registered with one line in `ATTENTIONS` (name -> layer class).
Every class takes its own arguments as keywords (`reduction`, ...) plus the
base layer arguments, and reads its channel count when it is built.
"""

from keras_coordatt.layers.cbam import CBAM
from keras_coordatt.layers.coordinate_attention import CoordinateAttention
from keras_coordatt.layers.squeeze_excitation import SqueezeExcitation

# Name -> layer class. The names are the suffixes of the layers that
# `add_attention` inserts (`{layer}_ca`, ...); keep them lower case.
ATTENTIONS = {
    "ca": CoordinateAttention,
    "se": SqueezeExcitation,
    "cbam": CBAM,
}


def attention_names():
    """The registered names, in registration order (`("ca", "se", "cbam")`)."""
    return tuple(ATTENTIONS)


def get_attention(name):
    """Returns the layer class registered under `name`.

    Args:
        name: a registered name (case-insensitive), e.g. `"ca"`.

    Returns:
        The layer class, e.g. `CoordinateAttention` for `"ca"`.

    Raises:
        ValueError: if `name` is not a registered name.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in ATTENTIONS:
        raise ValueError(
            f"Unknown attention {name!r}. Accepted names: "
            f"{', '.join(repr(n) for n in ATTENTIONS)}. "
            f"Received: attention={name!r}"
        )
    return ATTENTIONS[key]
