"""Stage `pretrain`: continued pretraining of a model with an expanded vocabulary.

Data: `token_store` (shards -> token ids on disk, once) and `packing` (ids -> fixed-length
blocks for each data-parallel rank). Training: the DeepSpeed engine and the one loop.
"""
