"""Tiny Hugging Face model folders made here (no hub): a 2-layer BERT with a tokenizer, as
``save_pretrained`` writes them, for the transformers factory and prediction tests."""

from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "model", "shard", "hadoop",
         "cluster", "is", "fast", "slow", "big", "small", "data", "on", "yarn", "runs"]
SENTENCES = ["the model runs on yarn", "hadoop is big", "a small fast cluster",
             "data on the cluster is slow", "shard"]


def tiny_bert(folder: Path, *, head: str = "sequence-classification", seed: int = 0,
              num_labels: int = 3) -> Path:
    """A tiny BERT (hidden 16, 2 layers) with ``head`` (``base``, ``sequence-classification``,
    ``token-classification``) and its tokenizer, saved to ``folder``."""
    import torch
    import transformers

    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=num_labels)
    cls = {"base": transformers.BertModel,
           "sequence-classification": transformers.BertForSequenceClassification,
           "token-classification": transformers.BertForTokenClassification}[head]
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():  # visible weights: a freshly initialised LayerNorm or bias is all 0/1
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder
