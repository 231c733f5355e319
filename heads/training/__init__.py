"""Training: fine-tuning the encoder with its heads (``run``, ``loop``, ``data``, ``augment``),
training a head on frozen embeddings (``head``), the settings of both (``config``, torch-free), the
output folder (``output``) and the shipped recipes (``recipes``; the recipe files are
``heads/data/recipes/*.json``). Nothing in ``heads``' inference path imports this package.
"""
