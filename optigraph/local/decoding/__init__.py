"""Decoding strategies: logits-level generation an HTTP upstream cannot offer, chosen per request with
`decoding` in the body (OptILLM's names and parameters) or as approaches of the same names.
One module per strategy; `registry.DECODERS` names them all."""
