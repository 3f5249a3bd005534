"""Triton kernels for kvstore (RoPE re-rotation, deviation top-k, row scatter/gather, KV
quantization), each with a plain-torch reference. Imports neither kvstore nor kvstore_client."""
