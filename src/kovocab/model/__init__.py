"""The model side of a vocabulary expansion: checkpoints whose rows follow the tokenizer.

resize (`resize_embeddings`: grow embeddings and LM head) · row_init (which rows are
new and how they start) · safetensors_io (read and rewrite only the tensors that
change) · tiny (`init_model`: a small random Llama for smoke runs) · chat_vector
(`chat_vector`: C + s * (I - B), the instruct difference on the pretrained model).
"""
