"""The tokenizer stages: Korean BPE in, an expanded base vocabulary out.

weights (how much of each corpus source to sample) → train (Korean SentencePiece BPE,
plain or Kiwi morpheme-aware) → merge (append the pieces to the base model) → export
(Hugging Face tokenizer files) · load (any tokenizer, for measuring) · expand
(`expand_vocab`: train + merge + measure in one step).
"""
