"""Every decoding strategy by name."""

from __future__ import annotations

from optigraph.local.decoding import (
    autothink,
    cot_decoding,
    deepconf,
    entropy_decoding,
    thinkdeeper,
)
from optigraph.local.decoding.base import DecodeContext, Decoder, DecodeResult

DECODERS: dict[str, Decoder] = {
    d.name: d
    for d in (cot_decoding.DECODER, entropy_decoding.DECODER, thinkdeeper.DECODER, deepconf.DECODER, autothink.DECODER)
}

__all__ = ["DECODERS", "DecodeContext", "DecodeResult", "Decoder"]
