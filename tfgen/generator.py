"""TextGenerator: a loaded model and its tokenizer, with generation and inspection."""
from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from tfgen import inspection
from tfgen.config import GenerationConfig
from tfgen.decoding import params as loop_params
from tfgen.decoding.engine import Engine
from tfgen.models.base import full_forward
from tfgen.models.registry import adapter_for
from tfgen.tokenizer import token_bytes, token_texts


@dataclasses.dataclass
class GenerationResult:
    """What `generate_ids` returns.

    Attributes:
        sequences: int32 [N, P + T]: the input ids (as given, padding included) followed by the
            new tokens; rows that ended early are filled with the pad id. N = batch *
            num_return_sequences, rows of one prompt next to each other.
        num_generated: int32 [N], new tokens per row (EOS included when reached).
        scores: greedy/sampling: float32 [N, T], the log-probability of each chosen token under
            the processed distribution (0 after the row ended); beam search: float32 [N], the
            length-penalised sequence scores Hugging Face reports as `sequences_scores`.
    """

    sequences: np.ndarray
    num_generated: np.ndarray
    scores: np.ndarray


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated sequence of `TextGenerator.complete`: the prompt as given, the new text (cut
    at the earliest stop string) and how many tokens were generated (EOS included)."""

    prompt: str
    completion: str
    num_tokens: int

    @property
    def text(self) -> str:
        """prompt + completion."""
        return self.prompt + self.completion


class TextGenerator:
    """A causal LM ready to generate and to be inspected.

    Args:
        model: a `transformers.TFGPT2LMHeadModel`, or a `tfgen.models.llama.LlamaWeights` (Llama-family
            models read from GGUF files; see `tfgen.load`).
        tokenizer: its transformers tokenizer (byte-level BPE).
        xla: compile decoding with XLA (default True).

    Example:
        >>> import tfgen
        >>> gen = tfgen.load("random:tiny")
        >>> text = gen.generate("The theory of relativity is", max_new_tokens=5)
    """

    def __init__(self, model, tokenizer, xla: bool = True):
        if not hasattr(model, "config") or not hasattr(tokenizer, "encode"):
            raise TypeError("TextGenerator needs a transformers TF GPT-2 or a "
                            "tfgen.models.llama.LlamaWeights, and its tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.lm = adapter_for(model)
        self._stop_tables = None
        self.engine = Engine(self.lm, xla=xla, token_tables=self.token_tables)
        self.name = getattr(model.config, "name_or_path", "") or model.config.model_type
        self.random_weights = False

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> List[int]:
        """Token ids of `text` (no special tokens added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def tokens(self, text: str) -> List[str]:
        """The tokens of `text` as strings, one per id.

        Each is the token's own text; a token holding part of a multi-byte character shows its
        bytes as escapes ("\\xe6\\x97"), see `tfgen.tokenizer.token_texts`.
        """
        return token_texts(self.tokenizer, self.tokenize(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of token ids."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError("ids must be a 1-D sequence of integers")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        return self.tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens (EOS) skipped, as `generate` shows it."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def num_parameters(self) -> int:
        """Number of parameters (tied input/output embeddings counted once)."""
        return self.lm.num_parameters()

    # -- inspection ---------------------------------------------------------------------------
    def next_tokens(self, text: str, k: int = 10):
        """The k most likely next tokens: list of (token text, id, probability). See tfgen.inspection."""
        return inspection.next_tokens(self, text, k)

    def hidden_states(self, text: str, layer: Union[int, str, None] = -1) -> np.ndarray:
        """Hidden states [tokens, hidden] of one layer, or of all layers. See tfgen.inspection."""
        return inspection.hidden_states(self, text, layer)

    def embedding(self, word: str) -> np.ndarray:
        """Mean input embedding of the word's tokens."""
        return inspection.embedding(self, word)

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words' input embeddings."""
        return inspection.similarity(self, a, b)

    def score(self, text: Union[str, Sequence[str]]) -> Union[np.ndarray, List[np.ndarray]]:
        """The log-probability (natural log) of each token of `text` given the tokens before it.

        The first token is scored given the model's BOS token (SmolLM2: `<|im_start|>`, GPT-2:
        `<|endoftext|>`), so every token of the text gets a score. `-score(text).mean()` is the
        negative log-likelihood per token, its exp the perplexity. One eager forward pass, the
        same adapter that generates; a list of texts is one left-padded batch (the prompt
        log-probabilities of several texts at once, OpenAI's `echo`).

        Returns:
            float32 [len(tokenize(text))]; for a list, one such array per text.

        Raises:
            ValueError: empty text, or text longer than the model's context (BOS included).

        Example:
            >>> nll = -gen.score("The cat sat on the mat.").mean()
            >>> [s.sum() for s in gen.score(["A cat.", "A dog sat."])]
        """
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError("text must be a string or a non-empty list of strings")
        encoded = []
        for index, item in enumerate(texts):
            ids = self.tokenize(item)
            where = "" if single else f" (text {index})"
            if not ids:
                raise ValueError(f"text must contain at least one token to score{where}")
            if len(ids) + 1 > self.lm.max_positions:
                raise ValueError(f"text has {len(ids)} tokens; with BOS that exceeds the model's context of "
                                 f"{self.lm.max_positions}; shorten it{where}")
            encoded.append([self.lm.bos_token_id] + ids)
        import tensorflow as tf

        ids, mask = loop_params.left_pad(encoded, self.lm.pad_token_id)
        hidden, _ = full_forward(self.lm, ids, mask)
        log_probs = tf.nn.log_softmax(self.lm.logits(hidden[:, :-1]), axis=-1)  # [B, T, V]
        chosen = tf.gather(log_probs, ids[:, 1:], axis=2, batch_dims=2).numpy()  # [B, T]
        scores = [chosen[row, ids.shape[1] - len(tokens):] for row, tokens in enumerate(encoded)]
        return scores[0] if single else scores

    def chat_prompt(self, message: str) -> str:
        """`message` as a user turn in the model's chat template, ready for the assistant's reply.

        Raises:
            ValueError: the tokenizer has no chat template (GPT-2 models).
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name} has no chat template; chat=True needs a chat model "
                             "(such as smollm2-135m)")
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Union[str, Sequence[str]], generation_config=None,
                 return_full_text: bool = True, chat: bool = False, **params) -> Union[str, List[str]]:
        """Continue one prompt or a list of prompts.

        Args:
            prompts: a string, or a list of strings (an empty string starts from BOS).
            generation_config: a `tfgen.GenerationConfig` or `transformers.GenerationConfig`.
            return_full_text: prompt + continuation (default) or the continuation only.
            chat: treat each prompt as a user message: apply the model's chat template (from the
                GGUF metadata) with the assistant's turn opened, and return the reply (the
                prompt as given + the reply when return_full_text). See `chat_prompt`.
            **params: any GenerationConfig field (max_new_tokens, do_sample, top_p, ...).

        Returns:
            A string for a string prompt (a list of num_return_sequences strings when that is > 1);
            for a list, a flat list with num_return_sequences entries per prompt, in order.

        Example:
            >>> gen.generate(["Hello", "The sky is"], max_new_tokens=8, do_sample=True, seed=0)
        """
        single = isinstance(prompts, str)
        results = self.complete([prompts] if single else prompts, generation_config, chat=chat, **params)
        outputs = [r.text if return_full_text else r.completion for r in results]
        if single:
            return outputs[0] if len(outputs) == 1 else outputs
        return outputs

    def complete(self, prompts: Sequence[str], generation_config=None, chat: bool = False,
                 **params) -> List[Completion]:
        """Continue a list of prompts and say, per returned sequence, what was generated.

        The per-row text entry point under `generate`, the Apache Beam handler and the CLI:
        parameters as in `generate` (temperature, top_k, top_p, repetition_penalty,
        max_new_tokens and seed may hold one value per prompt; a per-row seed may be None for a
        fresh one).

        Returns:
            One `Completion` per sequence: num_return_sequences per prompt, in prompt order.

        Example:
            >>> [c.num_tokens for c in gen.complete(["Hi", "The sky is"], max_new_tokens=[4, 8])]
        """
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError("prompts must be a string or a non-empty list of strings")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise TypeError(f"prompt {index} must be a string, got {type(text).__name__}")
        config = GenerationConfig.from_any(generation_config, **params)
        model_texts = [self.chat_prompt(text) for text in prompts] if chat else prompts
        encoded = [self.prompt_ids(text) for text in model_texts]
        ids, mask = loop_params.left_pad(encoded, self.lm.pad_token_id)
        result = self._run(ids, mask, config)
        stops = config.stop_strings
        completions = []
        for row, count in enumerate(result["num_generated"]):
            text = cut_at_stop(self.detokenize(result["new_tokens"][row, :count].tolist()), stops)
            completions.append(Completion(prompts[row // config.num_return_sequences], text, int(count)))
        return completions

    def generate_ids(self, input_ids, attention_mask=None, generation_config=None, **params) -> GenerationResult:
        """Generate from token ids.

        Args:
            input_ids: int [B, P] (a list of equal-length lists or an array), left-padded.
            attention_mask: int [B, P], 1 for real tokens; None means all real.
            generation_config, **params: as in `generate`; temperature, top_k, top_p,
                repetition_penalty, max_new_tokens and seed may be arrays with one value per row.
        """
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError("input_ids must be a non-empty 2-D array of integer token ids")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"input_ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
        if (mask.sum(axis=1) == 0).any():
            raise ValueError("every row of attention_mask needs at least one real token")
        config = GenerationConfig.from_any(generation_config, **params)
        result = self._run(ids.astype(np.int32), mask.astype(np.int32), config)
        copies = config.num_return_sequences
        prompt = np.repeat(ids, copies, axis=0).astype(np.int32)
        sequences = np.concatenate([prompt, result["new_tokens"].astype(np.int32)], axis=1)
        scores = result.get("scores", result.get("log_probs"))
        return GenerationResult(sequences, result["num_generated"].astype(np.int32), scores)

    def stream(self, prompt: str, generation_config=None, chat: bool = False, **params) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as tokens are produced.

        Greedy or sampling (not beam search), one prompt. Stops at EOS, max_new_tokens or a stop
        string (which is not yielded). `chat=True` streams the reply to `prompt` as a user message.
        """
        config = GenerationConfig.from_any(generation_config, **params)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        config.validate(batch_size=1, vocab_size=self.vocab_size)
        if config.num_beams > 1 or config.num_return_sequences > 1:
            raise ValueError("stream supports greedy search and sampling of one sequence "
                             "(num_beams=1, num_return_sequences=1)")
        ids = self.prompt_ids(self.chat_prompt(prompt) if chat else prompt)
        config.check_fits(len(ids), self.lm.max_positions)
        return stream_pieces(self.detokenize, self.engine.stream(ids, config), config.stop_strings)

    # -- helpers ------------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> List[int]:
        """A prompt's ids as the model runs them: an empty prompt starts from the BOS token, and so
        does every prompt of a model whose tokenizer adds BOS (`add_bos_token`: Gemma, Llama 2,
        KerasHub models, as llama.cpp and KerasHub's preprocessors do) unless the text already
        begins with it (a chat template that writes it)."""
        ids = self.tokenize(text)
        bos = self.lm.bos_token_id
        if not ids or getattr(self.tokenizer, "add_bos_token", False) and ids[0] != bos:
            ids = [bos] + ids
        return ids

    def graph_module(self, **options):
        """Generation as TensorFlow functions on tensors, for use inside your own TF code.

        Returns the `tf.Module` the exporter saves (`tfgen.export.graph_module`; options such as
        max_prompt_tokens, max_new_tokens, batch_buckets as in `export_saved_model`). Example:

            >>> module = gen.graph_module(max_new_tokens=32)
            >>> @tf.function
            ... def complete(prompts):
            ...     return module.greedy_text(prompts)["completion"]
        """
        from tfgen.export import graph_module

        return graph_module(self, **options)

    def token_tables(self):
        """Each token's bytes for the in-loop stop-string check (built on first use)."""
        if self._stop_tables is None:
            import tensorflow as tf

            from tfgen.decoding import stops

            table, lengths = stops.token_table(token_bytes(self.tokenizer, self.vocab_size))
            self._stop_tables = (tf.constant(table), tf.constant(lengths))
        return self._stop_tables

    def _run(self, ids, mask, config: GenerationConfig) -> dict:
        config.validate(batch_size=ids.shape[0], vocab_size=self.vocab_size)
        config.check_fits(int(mask.sum(axis=1).max()), self.lm.max_positions)
        return self.engine.generate(ids, mask, config)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def stream_pieces(detokenize, tokens: Iterator[int], stops: Sequence[str]) -> Iterator[str]:
    """Text pieces of a stream of new token ids, as each can be shown.

    A piece waits while the text ends in half of a multi-byte character, and the last
    len(longest stop string) - 1 characters are held back until they cannot begin a stop string;
    the stream ends before the first stop string (which is not yielded).
    """
    hold = max((len(s) for s in stops), default=1) - 1
    new, shown = [], 0
    text = ""
    for token in tokens:
        new.append(token)
        text = detokenize(new)
        if text.endswith("\ufffd"):
            continue  # a multi-byte character split across tokens: wait for the rest
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut != -1:
            if cut > shown:
                yield text[shown:cut]
            return
        ready = len(text) - hold
        if ready > shown:
            yield text[shown:ready]
            shown = ready
    if len(text) > shown:
        yield text[shown:]
