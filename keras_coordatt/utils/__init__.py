"""Small helpers shared by the subpackages (no Keras imports here)."""
