"""TextGenerator: a loaded model and its tokenizer, with generation and inspection."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfgen import inspection
from tfgen.config import GenerationConfig
from tfgen.decoding import params as loop_params
from tfgen.decoding import speculative as speculative_decoding
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
        top_ids, top_logprobs: with `logprobs=K`: int32 / float32 [N, T, K], each step's K most
            likely tokens and their log-probabilities under the distribution the token was chosen
            from (the one `scores` reports), most likely first; None otherwise.
        raw_logprobs, raw_top_ids, raw_top_logprobs: with `raw_logprobs=True` as well: the
            chosen token's log-probability [N, T] and the top K [N, T, K] under the model's raw
            distribution (before any processor or warper).
        speculation: with `speculative=...`, a `SpeculationStats` (passes, proposed and accepted
            tokens per row, tokens per pass); None otherwise.
    """

    sequences: np.ndarray
    num_generated: np.ndarray
    scores: np.ndarray
    top_ids: Optional[np.ndarray] = None
    top_logprobs: Optional[np.ndarray] = None
    raw_logprobs: Optional[np.ndarray] = None
    raw_top_ids: Optional[np.ndarray] = None
    raw_top_logprobs: Optional[np.ndarray] = None
    speculation: Optional["SpeculationStats"] = None


@dataclasses.dataclass(frozen=True)
class SpeculationStats:
    """How speculative decoding went (`generate(..., speculative=...)`), per returned row.

    Attributes:
        forward_passes: int32 [N], the model's passes while the row ran (its prefill included);
            plain decoding takes one per token.
        proposed, accepted: int32 [N], proposal tokens scored and kept.
        tokens_per_pass: all rows' generated tokens over all their passes (1.0 without speculation).
    """

    forward_passes: np.ndarray
    proposed: np.ndarray
    accepted: np.ndarray
    tokens_per_pass: float

    @classmethod
    def of(cls, result: dict) -> Optional["SpeculationStats"]:
        """From the engine's outputs; None when they are a plain loop's."""
        if "forward_passes" not in result:
            return None
        passes = result["forward_passes"].astype(np.int32)
        rate = float(result["num_generated"].sum()) / max(int(passes.sum()), 1)
        return cls(passes, result["proposed"].astype(np.int32), result["accepted"].astype(np.int32), rate)


@dataclasses.dataclass(frozen=True)
class Alternative:
    """A token the model could have chosen at a step: its id, its text and its log-probability."""

    id: int
    text: str
    logprob: float


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the `logprobs` most likely alternatives
    under the distribution it was chosen from (processed, and warped for sampling: what OpenAI's
    API reports); with raw_logprobs also the same under the model's raw distribution."""

    id: int
    text: str
    logprob: float
    top: Tuple[Alternative, ...] = ()
    raw_logprob: Optional[float] = None
    raw_top: Tuple[Alternative, ...] = ()


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated sequence of `TextGenerator.complete`: the prompt as given, the new text (cut
    at the earliest stop string), how many tokens were generated (EOS included) and, when asked
    for (`logprobs=K`), one `TokenLogprob` per generated token."""

    prompt: str
    completion: str
    num_tokens: int
    logprobs: Optional[Tuple[TokenLogprob, ...]] = None

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
        # The model's own generation parameters (a Hugging Face directory's generation_config.json):
        # under the caller's, as transformers' generate merges them (`GenerationConfig.from_any`).
        self.defaults: dict = {}
        # The last speculative call's `SpeculationStats` (text APIs return strings; generate_ids
        # returns them on its result too).
        self.last_speculation: Optional[SpeculationStats] = None

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
        scores = self._token_logprobs(encoded)
        return scores[0] if single else scores

    def completion_logprobs(self, prompt_ids: Sequence[Sequence[int]],
                            completion_ids: Sequence[Sequence[int]]) -> List[np.ndarray]:
        """The log-probability of each completion token given its prompt and the tokens before it.

        The model's own distribution (no temperature or other processor), one eager forward pass
        over the batch; `best_of`'s default scorer is the mean of each row (the length-normalised
        log-likelihood OpenAI ranks `best_of` candidates by).

        Args:
            prompt_ids: one list of token ids per row, as the model ran them (`prompt_ids`).
            completion_ids: one non-empty list of token ids per row.

        Returns:
            One float32 array [len(completion_ids[row])] per row.

        Example:
            >>> prompt = gen.prompt_ids("The sky is")
            >>> gen.completion_logprobs([prompt, prompt], [gen.tokenize(" blue"), gen.tokenize(" green")])
        """
        if len(prompt_ids) != len(completion_ids) or not len(prompt_ids):
            raise ValueError(f"prompt_ids and completion_ids need one entry per row each, got "
                             f"{len(prompt_ids)} and {len(completion_ids)}")
        rows = []
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
            ids = [int(i) for i in prompt] + [int(i) for i in completion]
            if not len(prompt) or not len(completion):
                raise ValueError(f"row {row}: the prompt and the completion need at least one token each")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ValueError(f"row {row}: token ids must be in [0, {self.vocab_size})")
            if len(ids) > self.lm.max_positions:
                raise ValueError(f"row {row}: {len(ids)} tokens exceed the model's context of "
                                 f"{self.lm.max_positions}")
            rows.append(ids)
        scores = self._token_logprobs(rows)
        return [row[len(row) - len(completion):] for row, completion in zip(scores, completion_ids)]

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
            **params: any GenerationConfig field (max_new_tokens, do_sample, top_p, ...),
                `best_of` and `scorer` (see `complete`), and `speculative` /
                `num_speculative_tokens` (speculative decoding, see `complete`).

        Returns:
            A string for a string prompt (a list of num_return_sequences strings when that is > 1);
            for a list, a flat list with num_return_sequences entries per prompt, in order. With
            `logprobs=K`, `Completion`s in place of the strings (`.text`, `.completion`, and
            `.logprobs`: per generated token its id, text, log-probability and K alternatives).

        Example:
            >>> gen.generate(["Hello", "The sky is"], max_new_tokens=8, do_sample=True, seed=0)
            >>> [(t.text, t.logprob) for t in gen.generate("Hello", logprobs=2).logprobs]
            >>> gen.generate("Hello", best_of=4, do_sample=True, seed=0)  # the likeliest of 4 samples
        """
        single = isinstance(prompts, str)
        results = self.complete([prompts] if single else prompts, generation_config, chat=chat, **params)
        if results[0].logprobs is not None:  # logprobs asked for: the Completions, which carry them
            outputs = results
        else:
            outputs = [r.text if return_full_text else r.completion for r in results]
        if single:
            return outputs[0] if len(outputs) == 1 else outputs
        return outputs

    def complete(self, prompts: Sequence[str], generation_config=None, chat: bool = False,
                 best_of: Optional[int] = None, scorer: Optional[Callable] = None,
                 speculative=None, num_speculative_tokens: Optional[int] = None,
                 **params) -> List[Completion]:
        """Continue a list of prompts and say, per returned sequence, what was generated.

        The per-row text entry point under `generate`, the Apache Beam handler and the CLI:
        parameters as in `generate` (temperature, top_k, top_p, repetition_penalty,
        max_new_tokens and seed may hold one value per prompt; a per-row seed may be None for a
        fresh one).

        Best of n (OpenAI's `n` and `best_of`; `n` is `num_return_sequences`): with `best_of`
        (or a `scorer`) given, each prompt gets `best_of` candidates in the same batch (as
        num_return_sequences=best_of: sampling, or beam search's best_of best beams) and only
        the `num_return_sequences` highest-scoring are returned, best first.

        Args:
            best_of: candidates per prompt, at least num_return_sequences (default: that many,
                which keeps them all but ranks them).
            scorer: None for the model's own mean log-probability of each candidate's generated
                tokens given its prompt (`completion_logprobs`; EOS counted, the raw
                distribution), or a callable `texts -> scores` taking the candidates' full texts
                (prompt + completion) and returning one number per text, higher is better.
            speculative: None, "prompt_lookup" (propose continuations of n-grams found in the
                row's own text) or a draft `TextGenerator` with the same vocabulary: speculative
                decoding, the same tokens as without it, in fewer model passes
                (`tfgen.decoding.speculative`; greedy and sampling, not beam search). The
                statistics land in `last_speculation`. A `speculative.PromptLookup` or
                `DraftModel` is taken as it is (e.g. `pass_exponent=0.0`: check every proposal).
            num_speculative_tokens: the most tokens proposed per pass, 1..16 (default 8).

        Returns:
            One `Completion` per sequence: num_return_sequences per prompt, in prompt order.

        Raises:
            ValueError: best_of not a positive integer or below num_return_sequences; a scorer
                that raises, returns the wrong number of scores or something that is not numbers.

        Example:
            >>> [c.num_tokens for c in gen.complete(["Hi", "The sky is"], max_new_tokens=[4, 8])]
            >>> gen.complete(["Hi"], best_of=5, num_return_sequences=2, do_sample=True, seed=1,
            ...              scorer=lambda texts: [-len(t) for t in texts])  # the 2 shortest of 5
        """
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError("prompts must be a string or a non-empty list of strings")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise TypeError(f"prompt {index} must be a string, got {type(text).__name__}")
        config = GenerationConfig.from_any(generation_config, defaults=self.defaults, **params)
        keep = config.num_return_sequences
        ranked = best_of is not None or scorer is not None
        if ranked:
            config = dataclasses.replace(config, num_return_sequences=_check_best_of(best_of, scorer, config))
        model_texts = [self.chat_prompt(text) for text in prompts] if chat else prompts
        encoded = [self.prompt_ids(text) for text in model_texts]
        ids, mask = loop_params.left_pad(encoded, self.lm.pad_token_id)
        result = self._run(ids, mask, config, self._speculation(speculative, num_speculative_tokens, config))
        stops = config.stop_strings
        completions = []
        for row, count in enumerate(result["num_generated"]):
            text = cut_at_stop(self.detokenize(result["new_tokens"][row, :count].tolist()), stops)
            entries = None if config.logprobs is None else self._token_logprobs_of(result, row, int(count))
            prompt = prompts[row // config.num_return_sequences]
            completions.append(Completion(prompt, text, int(count), entries))
        if not ranked:
            return completions
        copies = config.num_return_sequences
        if scorer is None:  # the model's mean log-probability of the tokens each row generated
            counts = result["num_generated"]
            generated = [result["new_tokens"][row, :count] for row, count in enumerate(counts)]
            logprobs = self.completion_logprobs([encoded[row // copies] for row in range(len(counts))],
                                                generated)
            scores = np.array([row.mean() for row in logprobs])  # every row has >= 1 token
        else:
            scores = call_scorer(scorer, [c.text for c in completions])
        return [completions[row] for row in best_rows(scores, copies, keep)]

    def generate_ids(self, input_ids, attention_mask=None, generation_config=None, speculative=None,
                     num_speculative_tokens: Optional[int] = None, **params) -> GenerationResult:
        """Generate from token ids.

        Args:
            input_ids: int [B, P] (a list of equal-length lists or an array), left-padded.
            attention_mask: int [B, P], 1 for real tokens; None means all real.
            generation_config, **params: as in `generate`; temperature, top_k, top_p,
                repetition_penalty, max_new_tokens and seed may be arrays with one value per row.
            speculative, num_speculative_tokens: speculative decoding, as in `complete`; the
                result's `speculation` then holds its statistics.
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
        config = GenerationConfig.from_any(generation_config, defaults=self.defaults, **params)
        result = self._run(ids.astype(np.int32), mask.astype(np.int32), config,
                           self._speculation(speculative, num_speculative_tokens, config))
        copies = config.num_return_sequences
        prompt = np.repeat(ids, copies, axis=0).astype(np.int32)
        sequences = np.concatenate([prompt, result["new_tokens"].astype(np.int32)], axis=1)
        scores = result.get("scores", result.get("log_probs"))
        extras = {field: result.get(key) for field, key in _LOGPROB_OUTPUTS.items()}
        return GenerationResult(sequences, result["num_generated"].astype(np.int32), scores, **extras,
                                speculation=SpeculationStats.of(result))

    def stream(self, prompt: str, generation_config=None, chat: bool = False, speculative=None,
               num_speculative_tokens: Optional[int] = None, **params) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as tokens are produced.

        Greedy or sampling (not beam search), one prompt. Stops at EOS, max_new_tokens or a stop
        string (which is not yielded). `chat=True` streams the reply to `prompt` as a user message.
        `speculative` is checked but the stream decodes without it, one token per step (the same
        tokens: speculation never changes them).
        """
        config = GenerationConfig.from_any(generation_config, defaults=self.defaults, **params)
        self._speculation(speculative, num_speculative_tokens, config)
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

    def _token_logprobs_of(self, result: dict, row: int, count: int) -> Tuple[TokenLogprob, ...]:
        """Row `row`'s first `count` steps of the engine's log-probability outputs as entries."""
        chosen = result["new_tokens"][row, :count]
        top = result.get("top_ids", np.zeros([len(result["new_tokens"]), count, 0], np.int32))[row, :count]
        raw_top = result.get("raw_top_ids")
        ids = set(chosen.tolist()) | set(top.ravel().tolist())
        if raw_top is not None:
            ids |= set(raw_top[row, :count].ravel().tolist())
        ordered = sorted(ids)
        texts = dict(zip(ordered, token_texts(self.tokenizer, ordered)))
        entries = []
        for step, token in enumerate(chosen.tolist()):
            extra = {}
            if raw_top is not None:
                extra = dict(raw_logprob=float(result["raw_log_probs"][row, step]),
                             raw_top=_alternatives(texts, raw_top[row, step],
                                                   result["raw_top_log_probs"][row, step]))
            alternatives = _alternatives(texts, top[step], result["top_log_probs"][row, step]) if top.size else ()
            entries.append(TokenLogprob(int(token), texts[int(token)], float(result["log_probs"][row, step]),
                                        alternatives, **extra))
        return tuple(entries)

    def _token_logprobs(self, sequences: List[List[int]]) -> List[np.ndarray]:
        """For each sequence, the log-probability of its tokens 1.. given the tokens before them:
        one left-padded batch, one eager forward pass (`score` and `completion_logprobs`)."""
        import tensorflow as tf

        ids, mask = loop_params.left_pad(sequences, self.lm.pad_token_id)
        hidden, _ = full_forward(self.lm, ids, mask)
        log_probs = tf.nn.log_softmax(self.lm.logits(hidden[:, :-1]), axis=-1)  # [B, T - 1, V]
        chosen = tf.gather(log_probs, ids[:, 1:], axis=2, batch_dims=2).numpy()  # [B, T - 1]
        return [chosen[row, ids.shape[1] - len(tokens):] for row, tokens in enumerate(sequences)]

    def _speculation(self, speculative, num_tokens, config: GenerationConfig):
        """(proposer, k) for the engine from `complete`'s speculative arguments, or None."""
        if speculative is None:
            if num_tokens is not None:
                raise ValueError("num_speculative_tokens needs speculative='prompt_lookup' or a draft "
                                 "TextGenerator")
            return None
        proposer = speculative_decoding.proposer_for(speculative, self.lm)
        num_tokens = speculative_decoding.check_num_tokens(
            speculative_decoding.DEFAULT_TOKENS if num_tokens is None else num_tokens)
        if isinstance(config.num_beams, int) and config.num_beams > 1:
            raise ValueError("speculative decoding supports greedy search and sampling, not beam search "
                             f"(num_beams={config.num_beams})")
        return proposer, num_tokens

    def _run(self, ids, mask, config: GenerationConfig, speculation=None) -> dict:
        config.validate(batch_size=ids.shape[0], vocab_size=self.vocab_size)
        config.check_fits(int(mask.sum(axis=1).max()), self.lm.max_positions)
        result = self.engine.generate(ids, mask, config, speculation)
        if speculation is not None:
            self.last_speculation = SpeculationStats.of(result)
        return result


def _check_best_of(best_of, scorer, config: GenerationConfig) -> int:
    """`complete`'s best_of (None: num_return_sequences) after its checks: the candidates per prompt."""
    if scorer is not None and not callable(scorer):
        raise TypeError(f"scorer must be None (the model's mean log-probability) or a callable "
                        f"texts -> scores, got {type(scorer).__name__}")
    keep = config.num_return_sequences
    if best_of is None:
        return keep
    if isinstance(best_of, bool) or not isinstance(best_of, (int, np.integer)) or best_of < 1:
        raise ValueError(f"best_of must be a positive integer, got {best_of!r}")
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool) and keep > best_of:
        raise ValueError(f"num_return_sequences (OpenAI's n) = {keep} is larger than best_of={best_of}; "
                         "best_of candidates are generated and the n best returned, so n <= best_of")
    if best_of > 1 and not config.do_sample and config.num_beams < best_of:
        raise ValueError(f"best_of={best_of} candidates need do_sample=True (or beam search with "
                         f"num_beams >= {best_of}); greedy search would repeat one text")
    return int(best_of)


def call_scorer(function: Callable, texts: Sequence[str], role: str = "scorer",
                bounds: Optional[tuple] = None) -> np.ndarray:
    """Call a user's `texts -> scores` callable and check what it returned: one finite number per
    text (within `bounds`, inclusive, when given). Shared by `best_of` and `tfgen.screen`.

    Returns:
        float64 [len(texts)].

    Raises:
        ValueError: naming the callable, when it raises or returns anything else.
    """
    label = f"{role} {getattr(function, '__name__', type(function).__name__)!r}"
    try:
        values = function(list(texts))
    except Exception as error:  # a user's callable: any failure becomes one clear error
        raise ValueError(f"{label} raised {type(error).__name__}: {error}") from error
    try:
        array = np.asarray(values)
    except Exception:  # ragged or otherwise not an array
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.ndim != 1:
        raise ValueError(f"{label} must return one number per text (a list of floats), got "
                         f"{str(values)[:80]}")
    if array.shape[0] != len(texts):
        raise ValueError(f"{label} returned {array.shape[0]} scores for {len(texts)} texts; "
                         "it must return one number per text")
    scores = array.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{label} returned NaN scores: {scores.tolist()}")
    if bounds is not None and ((scores < bounds[0]) | (scores > bounds[1])).any():
        raise ValueError(f"{label} must return scores in [{bounds[0]}, {bounds[1]}], got {scores.tolist()}")
    return scores


def best_rows(scores: np.ndarray, group: int, keep: int) -> List[int]:
    """Rows of the `keep` highest scores in each consecutive group of `group` rows, best first
    (ties: the earlier row)."""
    rows = []
    for first in range(0, len(scores), group):
        order = np.argsort(-np.asarray(scores[first:first + group]), kind="stable")[:keep]
        rows.extend(first + int(i) for i in order)
    return rows


def _alternatives(texts: dict, ids, values) -> Tuple[Alternative, ...]:
    return tuple(Alternative(int(i), texts[int(i)], float(v)) for i, v in zip(ids, values))


# GenerationResult field -> the engine's output name (`Engine.generate`).
_LOGPROB_OUTPUTS = {"top_ids": "top_ids", "top_logprobs": "top_log_probs", "raw_logprobs": "raw_log_probs",
                    "raw_top_ids": "raw_top_ids", "raw_top_logprobs": "raw_top_log_probs"}


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
