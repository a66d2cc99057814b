"""Layers of the scARE model."""

from attreg_sc.nn.layers import Decoder, Encoder, FCLayers, LibraryEncoder

__all__ = ["FCLayers", "Encoder", "LibraryEncoder", "Decoder"]
