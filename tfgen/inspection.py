"""Looking inside a model: next-token distribution, hidden states, input embeddings, similarity.

Each function takes a `TextGenerator` and runs the model's forward pass through the same adapter
the decoding engine uses (`tfgen.models`), outside XLA (one prompt, no cache reuse).
"""
from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np

from tfgen.models.base import full_forward
from tfgen.tokenizer import token_texts


def _check_text(name: str, text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    return text


def _ids_for(generator, text: str) -> List[int]:
    ids = generator.tokenize(text)
    if len(ids) > generator.lm.max_positions:
        raise ValueError(f"text has {len(ids)} tokens, more than the model's context of "
                         f"{generator.lm.max_positions}; shorten it")
    return ids if ids else [generator.lm.bos_token_id]


def next_tokens(generator, text: str, k: int = 10) -> List[Tuple[str, int, float]]:
    """The k most likely next tokens after `text`: (token text, id, probability), most likely first.

    The probabilities are the softmax of the logits at the last position (an empty text starts
    from the BOS token).
    """
    _check_text("text", text)
    vocab = generator.lm.vocab_size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be between 1 and the vocabulary size {vocab}, got {k}")
    ids = _ids_for(generator, text)
    hidden, _ = full_forward(generator.lm, [ids], [[1] * len(ids)])
    logits = generator.lm.logits(hidden[:, -1, :]).numpy()[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    texts = token_texts(generator.tokenizer, [int(i) for i in order])
    return [(text, int(i), float(probs[i])) for text, i in zip(texts, order)]


def hidden_states(generator, text: str, layer: Union[int, str, None] = -1) -> np.ndarray:
    """Hidden states of `text`'s tokens: [tokens, hidden] for one layer, [layers+1, tokens, hidden] for all.

    Layer 0 is the input embeddings (token + position), layer i the output of block i, and the
    last layer (-1) the final layer-normed output, as in Hugging Face's `output_hidden_states`.
    `layer="all"` (or None) returns every layer.
    """
    _check_text("text", text)
    count = generator.lm.num_layers + 1
    if layer is not None and layer != "all":
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an integer or 'all', got {layer!r}")
        if not -count <= layer < count:
            raise ValueError(f"layer must be in [{-count}, {count - 1}] (the model has {count} layers "
                             f"of hidden states counting the embeddings), got {layer}")
    ids = _ids_for(generator, text)
    layers, _ = full_forward(generator.lm, [ids], [[1] * len(ids)], all_layers=True)
    stacked = np.stack([t.numpy()[0] for t in layers])
    return stacked if layer is None or layer == "all" else stacked[layer]


def embedding(generator, word: str) -> np.ndarray:
    """The input embedding of `word`: the mean of its tokens' rows of the embedding matrix."""
    _check_text("word", word)
    if not word:
        raise ValueError("word must not be empty")
    ids = generator.tokenize(word)
    matrix = generator.lm.input_embeddings()
    return np.asarray(matrix.numpy()[ids], np.float64).mean(axis=0)


def similarity(generator, a: str, b: str) -> float:
    """Cosine similarity of the input embeddings of two words."""
    va, vb = embedding(generator, a), embedding(generator, b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
