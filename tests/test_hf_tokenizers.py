"""Tokenizers of Hugging Face directories: tokenizer.json, tokenizer.model, chat templates, in the graph.

The directories are written here: byte-level BPE vocabularies trained with `tokenizers` on a small
text behind Llama 3's, Qwen 2's, GPT-2's and SmolLM's (digits first) pre-tokenizers, saved with
transformers' `save_pretrained` and a chat template; a SentencePiece model trained with
`sentencepiece` (tokenizer.model) with the tokenizer.json transformers' converter makes of it. The
references are independent of tfgen: `tokenizers`' own encode of the tokenizer.json,
`sentencepiece`'s of the tokenizer.model, transformers' `AutoTokenizer.from_pretrained` of the
directory (ids and chat template), jinja2 on the template. The graph tokenizer is compared with
`tokenizers` on varied and random text; one tiny KerasHub Llama3CausalLM is exported and served.
"""
import json
import os
import random

import numpy as np
import pytest

import tfgen
from tfgen.export.graph_tokenizer import GraphTokenizer
from tfgen.tokenizer import (GPT2_SPLIT_REGEX, LLAMA3_SPLIT_REGEX, QWEN2_SPLIT_REGEX, SENTENCEPIECE,
                             tokenizer_from_directory, tokenizer_kind)

CORPUS = """The quick brown fox jumps over the lazy dog. I'm sure they're here; we'll see, you'd think.
def main(argv):\n    for i in range(10):\n        print(i * 2, "ok")  # 12345\n\treturn 0
Naïve café résumé: 東京 and 日本語, emoji 😀🎉, Ünïcödé, ٣٤٥ ½ ², 3.14159 and 1000000 dollars!!!
  Indented   runs    of spaces\n\n\nand newlines\r\n and tabs\t\there. HELLO World's END'S.
"""
TEXTS = [
    "", " ", "  ", "\n", "Hello world", "  leading spaces", "trailing spaces   ", "a  b   c    d",
    "I'm here, they're there, we'LL see, SHE'S and 'S 'd 'Ve", "digits 1 12 123 1234 12345678 3.14",
    "x \n  y\n\n\n  z \t\tw", "def f(x):\n    return x ** 2  # square\n", "naïve café 東京 😀 ٣٤ ½",
    "e\u0301 vs \u00e9 (combining accent: NFC)", "a\u00a0b\u3000c\u2009d\x0be", "!!! ??? ... --- ;;;",
    "Ĵ ६ \u017f 'ſ ǅ", "<|begin_of_text|>Hi<|eot_id|>", "<|im_start|>user\nHi<|im_end|>\n", "\r\n\r\n",
]
SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
               "<|end_header_id|>"],
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gpt2": ["<|endoftext|>"], "digits": ["<|endoftext|>"],
}
# Chat templates as the models publish them (shortened to what they do with bos_token and
# add_generation_prompt).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
CHAT = [{"role": "user", "content": "What is 6 * 7?"}]


def random_texts(count, seed=0):
    """Texts drawn from characters and fragments where pre-tokenizers differ."""
    alphabet = (list("aZ' \t\n\r\x0b\u00a0\u3000\u2009 1234567890.,!?-_(){}\"sStTdDmMlLvVrReE")
                + ["'S", "'ll", "'LL", "'\u017f", "é", "e\u0301", "日本", "😀", "٣٤", "½", "\r\n", "  ",
                   "\n\n", "ǅ", "\U000105c0", "\U00010d40", "<|endoftext|>", "<|im_start|>", "<|"])
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(count)]


def write_bpe_directory(directory, kind):
    """A byte-level BPE tokenizer of `kind` trained on CORPUS, saved as transformers saves one."""
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                            trainers)
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if kind in ("llama3", "qwen"):
        regex = LLAMA3_SPLIT_REGEX if kind == "llama3" else QWEN2_SPLIT_REGEX
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated")
        backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif kind == "digits":  # SmolLM's: each digit alone, then GPT-2's regex
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "qwen":
        backend.normalizer = normalizers.NFC()
    backend.decoder = decoders.ByteLevel()
    specials = SPECIALS[kind]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([CORPUS * 3], trainer)
    if kind == "llama3":  # BOS first, as Llama 3's tokenizer.json says
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", 0)])])
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    names = ({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE}
             if kind == "llama3" else
             {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN_TEMPLATE}
             if kind == "qwen" else {"bos_token": specials[0], "eos_token": specials[0]})
    PreTrainedTokenizerFast(tokenizer_object=backend, **names).save_pretrained(directory)
    return directory


def train_sentencepiece(directory) -> str:
    """tokenizer.model: a SentencePiece BPE model with byte fallback and Gemma's special pieces."""
    import sentencepiece

    text = os.path.join(directory, "corpus.txt")
    with open(text, "w", encoding="utf-8") as handle:
        handle.write(CORPUS * 5)
    prefix = os.path.join(directory, "tokenizer")
    sentencepiece.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, vocab_size=420, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, minloglevel=2, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, add_dummy_prefix=False,
        normalization_rule_name="identity")  # Gemma's: no space in front, no NFKC
    os.remove(text)
    os.remove(prefix + ".vocab")
    return prefix + ".model"


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    """kind -> a save_pretrained directory with its tokenizer, each written on first use."""
    written = {}

    def get(kind):
        if kind not in written:
            directory = str(tmp_path_factory.mktemp(kind))
            if kind in SPECIALS:
                write_bpe_directory(directory, kind)
            else:  # "sentencepiece": tokenizer.model and the tokenizer.json transformers makes of it
                from unittest import mock

                from transformers import GemmaTokenizerFast

                from tfgen.sentencepiece_tokenizer import _model_pb2

                model = train_sentencepiece(directory)
                # The converter's protobuf module as tfgen picks it (sentencepiece's wants protobuf 7).
                with mock.patch("transformers.convert_slow_tokenizer.import_protobuf",
                                lambda *_: _model_pb2()):
                    fast = GemmaTokenizerFast(vocab_file=model, from_slow=True, chat_template=GEMMA_TEMPLATE)
                fast.save_pretrained(directory)
                if kind == "metaspace":  # the tokenizer.json alone (Metaspace-style, byte fallback)
                    os.remove(os.path.join(directory, "tokenizer.model"))
            written[kind] = directory
        return written[kind]

    return get


def reference(directory):
    """`tokenizers`' own tokenizer of the directory's tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))


# -- the Python side -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama3", "qwen"])
def test_ids_equal_tokenizers_and_transformers(directories, kind):
    from transformers import AutoTokenizer

    directory = directories(kind)
    tokenizer, backend = tokenizer_from_directory(directory), reference(directory)
    auto = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS + random_texts(200):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == backend.encode(text, add_special_tokens=False).ids, text
        assert tokenizer.encode(text) == backend.encode(text).ids == auto.encode(text), text
        assert tokenizer.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)


def test_bos_as_the_post_processor_adds_it(directories):
    llama3, qwen = (tokenizer_from_directory(directories(kind)) for kind in ("llama3", "qwen"))
    assert llama3.add_bos_token and llama3.bos_token == "<|begin_of_text|>"
    assert llama3.encode("Hi")[0] == llama3.bos_token_id  # add_special_tokens=True: as transformers
    assert not qwen.add_bos_token and qwen.eos_token == "<|im_end|>"
    assert tokenizer_kind(llama3) != SENTENCEPIECE


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
def test_chat_template_equals_transformers(directories, kind):
    from transformers import AutoTokenizer

    directory = directories(kind)
    ours, auto = tokenizer_from_directory(directory), AutoTokenizer.from_pretrained(directory)
    for generation in (True, False):
        text = ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation)
        assert text == auto.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=generation)
    assert text.startswith("<|begin_of_text|>" if kind == "llama3" else "<|im_start|>system")


def test_sentencepiece_directory_uses_tokenizer_model(directories):
    """tokenizer.model beside a SentencePiece-style tokenizer.json: SentencePiece itself, whose ids
    are `sentencepiece`'s and those of the tokenizer.json transformers converted; Gemma's BOS."""
    import jinja2
    import sentencepiece

    directory = directories("sentencepiece")
    tokenizer, backend = tokenizer_from_directory(directory), reference(directory)
    assert tokenizer_kind(tokenizer) == SENTENCEPIECE and tokenizer.add_bos_token
    plain = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model"))
    for text in [t for t in TEXTS if "<|" not in t] + ["<start_of_turn>user\nHi<end_of_turn>\n"]:
        ids = tokenizer.encode(text)
        assert ids == backend.encode(text, add_special_tokens=False).ids, text
        if "<start_of_turn>" not in text:
            assert ids == plain.encode(text), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("Hi", add_special_tokens=True) == backend.encode("Hi").ids  # <bos> first
    expected = jinja2.Template(GEMMA_TEMPLATE).render(messages=CHAT, bos_token="<bos>",
                                                      add_generation_prompt=True)
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == expected


def test_metaspace_tokenizer_json_alone_is_python_only(directories):
    directory = directories("metaspace")
    tokenizer, backend = tokenizer_from_directory(directory), reference(directory)
    assert tokenizer_kind(tokenizer) != SENTENCEPIECE
    for text in TEXTS:
        ids = backend.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text, add_special_tokens=False) == ids
    with pytest.raises(ValueError, match="byte-level BPE"):
        GraphTokenizer(tokenizer)


def test_bad_directories_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer: expected one of tokenizer.json, tokenizer.model"):
        tokenizer_from_directory(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        tokenizer_from_directory(str(tmp_path))


# -- in the graph ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama3", "qwen", "gpt2", "digits"])
def test_graph_ids_equal_tokenizers(directories, kind):
    """Varied and random text, special tokens in it; decoding as the Python side (specials skipped)."""
    import tensorflow as tf

    directory = directories(kind)
    tokenizer, backend = tokenizer_from_directory(directory), reference(directory)
    graph = GraphTokenizer(tokenizer)
    texts = TEXTS + [CORPUS] + random_texts(400, seed=1)
    ids = tf.function(graph.encode)(tf.constant(texts)).to_list()
    for text, row in zip(texts, ids):
        assert row == backend.encode(text, add_special_tokens=False).ids, text
    decoded = tf.function(graph.decode)(tf.ragged.constant(ids, tf.int32)).numpy()
    assert [d.decode("utf-8") for d in decoded] == [tokenizer.decode(row, skip_special_tokens=True)
                                                    for row in ids]


def test_gemma_graph_tokenizer_from_tokenizer_model(directories):
    import tensorflow as tf

    tokenizer = tokenizer_from_directory(directories("sentencepiece"))
    texts = [t for t in TEXTS if "<|" not in t] + ["<start_of_turn>user\nHi<end_of_turn>\n"]
    ids = GraphTokenizer(tokenizer).encode(tf.constant(texts)).to_list()
    assert ids == [tokenizer.encode(t) for t in texts]


def test_an_unknown_split_regex_is_named():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{L}+(?=\d)|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    with pytest.raises(ValueError, match=r"GPT-2, Llama 3, Qwen 2 / Qwen 3.*\\\\p\{L\}\+\(\?=\\\\d\)"):
        GraphTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))


def test_known_regexes_are_the_published_ones():
    """GPT-2's is the ByteLevel pre-tokenizer's own: both split text alike."""
    from tokenizers import Regex, pre_tokenizers

    own = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GPT2_SPLIT_REGEX), behavior="isolated"),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    for text in TEXTS + random_texts(100):
        assert own.pre_tokenize_str(text) == split.pre_tokenize_str(text), text


# -- a KerasHub Llama3CausalLM exported ----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama3_causal_lm(directories):
    """A tiny random Llama3CausalLM whose Llama3Tokenizer has the trained Llama 3 vocabulary."""
    import keras
    import keras_hub

    spec = json.loads(reference(directories("llama3")).to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    keras.utils.set_random_seed(3)
    tokenizer = keras_hub.models.Llama3Tokenizer(vocabulary=spec["vocab"], merges=merges)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32)
    return keras_hub.models.Llama3CausalLM(backbone, keras_hub.models.Llama3CausalLMPreprocessor(tokenizer))


def test_chat_prompt_has_bos_once(llama3_causal_lm, directories):
    """The template writes BOS; prompt_ids does not add a second one. Qwen's prompts get none."""
    gen = tfgen.load(llama3_causal_lm, xla=False)
    for kind in ("llama3", "qwen"):
        chat = tfgen.TextGenerator(gen.model, tokenizer_from_directory(directories(kind)), xla=False)
        ids = chat.prompt_ids(chat.chat_prompt("Hi"))
        if kind == "llama3":
            assert ids[0] == gen.lm.bos_token_id and gen.lm.bos_token_id not in ids[1:]
        else:
            assert chat.tokenizer.convert_ids_to_tokens(ids[0]) == "<|im_start|>"


def test_keras_hub_llama3_exports_and_serves(llama3_causal_lm, tmp_path):
    import tensorflow as tf

    from tfgen.export.serving_loader import SessionModel, audit_ops

    gen = tfgen.load(llama3_causal_lm, xla=False)
    keras_tokenizer = llama3_causal_lm.preprocessor.tokenizer
    graph = GraphTokenizer(gen.tokenizer)
    texts = [t for t in TEXTS if "<|im" not in t]
    assert graph.encode(tf.constant(texts)).to_list() == [gen.tokenize(t) for t in texts]
    # KerasHub's own ids on plain text (its split is not Llama 3's regex everywhere: "  leading"
    # gives it "  " + "leading", Llama 3's tokenizer.json " " + " leading"; "SHE'S" and indented
    # lines differ too).
    single = ["The quick brown fox jumps over the lazy dog.", "Hello world", "digits 1 12 123 1234 3.14",
              "Naïve café 東京 😀"]
    assert graph.encode(tf.constant(single)).to_list() == [np.asarray(keras_tokenizer(t)).tolist()
                                                           for t in single]
    # tf.function decoding (xla=False): a third of the build time. The validation the export runs in
    # a fresh process (greedy text against the engine's) is done here, in this process.
    version = tfgen.export_saved_model(gen, str(tmp_path / "llama3"), max_new_tokens=6, batch_buckets=(2,),
                                       prompt_buckets=(16,), strategies=("greedy",), progress=False,
                                       xla=False, validate=False)
    served = SessionModel(version)
    assert audit_ops(served)["ok"]
    prompts = ["The quick brown fox", "I'm  sure   12345 😀"]
    out = served.run("serving_default", {"prompt": np.array([p.encode() for p in prompts], dtype=object)})
    assert [t.decode() for t in out["text"]] == gen.generate(prompts, max_new_tokens=6)
