"""Hugging Face folders in-process via transformers: ``engine.py`` (causal LM, encoder with
pooling, classifier), ``pooling.py`` (sentence-embedding pooling as the model declares it),
``batching.py`` (concurrent embeddings share a forward pass). Imports the engines' shared
modules only.
"""
