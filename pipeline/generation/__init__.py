"""Capture during generation: the decoding walk as the model takes it (docs/generation.md).

An extraction whose forward pass is a decoding loop: prompts from the corpus, one
token at a time with the KV cache, every captured site of every token (prompt and
generated) stored like an extraction's, and each step's choice in the token table.
"""
