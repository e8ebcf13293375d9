"""SentencePiece vocabularies (GGUF tokenizer model "llama": Gemma, Llama 2): ids against llama.cpp,
text round trips, per-token bytes, the exported graph's tokenizer, stop strings in the loop.

The tiny vocabulary is trained here by sentencepiece's own trainer (BPE with byte fallback, a few
user-defined and control symbols) on a generated corpus, and written into two tiny random Llama
GGUF files the way llama.cpp's converter writes SentencePiece vocabularies: one with a space
prefix (Llama 2, TinyLlama), one without (Gemma). The references are llama.cpp (ids, per-token
bytes, detokenized text), the trained SentencePiece model itself and plain `str.find`.
"""
import io

import numpy as np
import pytest

import tfgen
from tfgen import cache
from tfgen.models.gguf import read_gguf
from tfgen.sentencepiece_tokenizer import SentencePieceTokenizer, model_proto_from_gguf
from tfgen.tokenizer import SENTENCEPIECE, token_bytes, token_texts, tokenizer_kind

llama_cpp = pytest.importorskip("llama_cpp")

# User-defined symbols as the trainer takes them (escaped spaces) and as llama.cpp's converter
# writes them into GGUF files (spaces as spaces); control symbols a chat template would write.
USER_DEFINED = ["<tag>", "</tag>", "\u2581\u2581", "\u2581\u2581\u2581\u2581", "\n", "\n\n", "\t"]
CONTROL = ["<start_of_turn>", "<end_of_turn>"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world", " Hello", "hello  world", "  two leading", "trailing   ", " ", "  ", "",
    "naïve café, Ünïcödé résumé; ÅÆØ",  # accents
    "日本語のテキスト 中文 한국어",  # CJK: byte fallback
    "emoji 😀🚀🎉 and ✨",
    "digits 0123456789 3.14159 1,000,000 and 2024-01-31",
    "tabs\tand\t\tmore\t\t\ttabs", "lines\nand\n\nmore\n\n\nlines\r\n", "\n\n\n\n\n", "x" + " " * 9 + "y",
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n\tx = [1, 22, 333]\n",
    "<tag>inside</tag> and <tag> spaced </tag>", "a<tag>b", "<tag>", "  <tag>  x",
    "A\u2581B",  # a literal U+2581 in the text
]
CHAT = "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"


def _corpus(seed=0, lines=1500):
    """Sentences from a fixed word list: prose, accented words, numbers, code, whitespace runs."""
    rng = np.random.default_rng(seed)
    words = ("the quick brown fox jumps over lazy dog hello world model token text generation "
             "theory relativity space time light energy mass speed data tensor graph export "
             "naïve café résumé über straße déjà vu piñata").split()
    code = ["def f(x):", "return x + 1", "for i in range(10):", "print(i)", "x = [1, 2, 3]", "if a == b:"]
    out = []
    for _ in range(lines):
        kind = rng.integers(0, 4)
        if kind == 0:
            out.append(" ".join(rng.choice(words, size=rng.integers(3, 12))).capitalize() + ".")
        elif kind == 1:
            out.append(" ".join(str(n) for n in rng.integers(0, 10 ** rng.integers(1, 6), size=4)))
        elif kind == 2:
            out.append("    " + rng.choice(code) + "  # " + rng.choice(words))
        else:
            out.append(rng.choice(words) + "  " + rng.choice(words) + "\t" + rng.choice(words))
    return out


@pytest.fixture(scope="module")
def trained():
    """A SentencePiece BPE model trained here: its processor, and (tokens, scores, types) as GGUF has them."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, model_type="bpe", vocab_size=600,
        byte_fallback=True, character_coverage=0.999, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=True, user_defined_symbols=USER_DEFINED, control_symbols=CONTROL,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(processor.get_piece_size()):
        piece = processor.id_to_piece(i)
        if piece in USER_DEFINED:
            kind, piece = 4, piece.replace("\u2581", " ")  # as llama.cpp's convert_hf_to_gguf.py writes them
        else:
            kind = 2 if processor.is_unknown(i) else 3 if processor.is_control(i) else \
                6 if processor.is_byte(i) else 5 if processor.is_unused(i) else 1
        tokens.append(piece)
        scores.append(processor.get_score(i))
        types.append(kind)
    return processor, (tokens, scores, types)


def write_sentencepiece_gguf(path, vocab, add_space_prefix, add_bos_token, tokenizer_model="llama", seed=0,
                             layers=2, hidden=32, heads=2, ffn=64):
    """A random Llama GGUF (float32 tensors, llama.cpp's layout) with a SentencePiece vocabulary."""
    import gguf

    tokens, scores, types = vocab
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(4096)  # llama.cpp's tokenize buffer is this long
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(3)
    writer.add_add_space_prefix(add_space_prefix)
    writer.add_add_bos_token(add_bos_token)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                             "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                             "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

    def add(name, shape, scale, shift=0.0):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale + shift).astype(np.float32))

    add("token_embd.weight", [len(tokens), hidden], 0.5)
    add("output_norm.weight", [hidden], 0.1, 1.0)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", [hidden], 0.1, 1.0)
        add(f"blk.{i}.ffn_norm.weight", [hidden], 0.1, 1.0)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(f"blk.{i}.{part}.weight", [hidden, hidden], 0.3)
        add(f"blk.{i}.ffn_gate.weight", [ffn, hidden], 0.2)
        add(f"blk.{i}.ffn_up.weight", [ffn, hidden], 0.2)
        add(f"blk.{i}.ffn_down.weight", [hidden, ffn], 0.2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Llama 2 style (a space in front of each text, BOS added) and Gemma style (neither).
VARIANTS = {"prefix": dict(add_space_prefix=True, add_bos_token=True),
            "plain": dict(add_space_prefix=False, add_bos_token=False)}


@pytest.fixture(scope="module")
def gguf_files(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("sentencepiece")
    paths = {}
    for name, options in VARIANTS.items():
        paths[name] = str(root / f"tiny-spm-{name}.gguf")
        write_sentencepiece_gguf(paths[name], trained[1], **options)
    return paths


@pytest.fixture(scope="module")
def tokenizers(gguf_files):
    """Each variant's tfgen tokenizer (from the GGUF file) and llama.cpp's vocabulary."""
    return {name: (read_gguf(path, use_cache=False).tokenizer(),
                   llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False))
            for name, path in gguf_files.items()}


def gguf_metadata(path):
    """A GGUF file's metadata {key: value}, read straight from its header (the layout of the GGUF
    spec): the gguf package's reader takes about 20 s over Gemma's 262,144-token vocabulary."""
    import mmap
    import struct

    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 0

        def read(code):
            nonlocal position
            (value,) = struct.unpack_from("<" + code, data, position)
            position += struct.calcsize(code)
            return value

        def string():
            nonlocal position
            size = read("Q")
            position += size
            return data[position - size:position].decode("utf-8")

        def value(kind):
            nonlocal position
            if kind == 8:
                return string()
            if kind != 9:
                return read(scalars[kind])
            item, count = read("I"), read("Q")
            if item == 8:
                return [string() for _ in range(count)]
            values = np.frombuffer(data, np.dtype("<" + scalars[item]), count, position)
            position += values.nbytes
            return values.tolist()

        assert data[:4] == b"GGUF"
        position = 4
        read("I"), read("Q")  # version, tensor count
        return {string(): value(read("I")) for _ in range(read("Q"))}


@pytest.fixture(scope="module")
def gemma3():
    """The real Gemma 3 vocabulary (262,144 pieces), from the packaged GGUF's metadata."""
    from tfgen import loading

    if "gemma3-270m" not in getattr(loading, "PACKAGED_GGUF", {}):
        pytest.skip("tfgen.loading does not package gemma3-270m")
    try:
        path = loading.packaged_gguf_path("gemma3-270m")
    except ValueError as error:
        pytest.skip(f"the packaged Gemma 3 GGUF is not available here: {error}")
    metadata = gguf_metadata(path)
    field = metadata.__getitem__
    proto = model_proto_from_gguf(
        field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type"),
        bos_id=field("tokenizer.ggml.bos_token_id"), eos_id=field("tokenizer.ggml.eos_token_id"),
        unk_id=field("tokenizer.ggml.unknown_token_id"), pad_id=field("tokenizer.ggml.padding_token_id"),
        add_space_prefix=field("tokenizer.ggml.add_space_prefix"))
    return (SentencePieceTokenizer(proto, add_bos_token=field("tokenizer.ggml.add_bos_token")),
            llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False))


def _llama_ids(vocab, text, special=False, add_bos=False):
    return vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


# -- the vocabulary and its ids -------------------------------------------------------------------
def test_the_gguf_vocabulary_is_the_trained_model(trained, gguf_files):
    """The rebuilt model is the trained one: same pieces and, on every text, the same ids (plain
    SentencePiece, both with a dummy prefix); the tokenizer reads the GGUF's special ids."""
    import sentencepiece

    processor, (tokens, scores, types) = trained
    proto = model_proto_from_gguf(tokens, scores, types, bos_id=1, eos_id=2, unk_id=0, pad_id=3,
                                  add_space_prefix=True)
    rebuilt = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert [rebuilt.id_to_piece(i) for i in range(len(tokens))] == \
        [processor.id_to_piece(i) for i in range(len(tokens))]
    for text in TEXTS:
        assert rebuilt.encode(text) == processor.encode(text), text
    tokenizer = read_gguf(gguf_files["prefix"], use_cache=False).tokenizer()
    assert tokenizer_kind(tokenizer) == SENTENCEPIECE
    ids = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (0, 1, 2, 3)
    assert (tokenizer.bos_token, tokenizer.eos_token, len(tokenizer)) == ("<s>", "</s>", len(tokens))
    assert set(tokenizer.all_special_ids) == {i for i, kind in enumerate(types) if kind in (2, 3)}


def test_the_cache_keeps_the_sentencepiece_model(gguf_files, tmp_path, monkeypatch):
    from tfgen.models import gguf as gguf_module

    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path))
    first = read_gguf(gguf_files["plain"])
    monkeypatch.setattr(gguf_module, "_convert", lambda _: pytest.fail("converted again"))
    second = read_gguf(gguf_files["plain"])
    assert second.sentencepiece_proto == first.sentencepiece_proto is not None
    assert second.tokenizer().encode(TEXTS[0]) == first.tokenizer().encode(TEXTS[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_equal_llama_cpp(tokenizers, variant):
    tokenizer, vocab = tokenizers[variant]
    for text in TEXTS:
        assert tokenizer.encode(text) == _llama_ids(vocab, text), text
    # Byte fallback is exercised, and so are the user-defined pieces.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(TEXTS[10]))
    assert any(piece.startswith("<0x") for piece in pieces)
    assert tokenizer.convert_tokens_to_ids("<tag>") in tokenizer.encode(TEXTS[18])
    # Control tokens written in the text are their ids, as llama.cpp parses them (special=True).
    assert tokenizer.encode(CHAT) == _llama_ids(vocab, CHAT, special=True)
    assert tokenizer.encode(CHAT)[0] == tokenizer.convert_tokens_to_ids("<start_of_turn>")
    # BOS with add_special_tokens, when the file says to add it (llama.cpp's add_bos).
    added = VARIANTS[variant]["add_bos_token"]
    assert tokenizer.encode("Hello", add_special_tokens=True) == _llama_ids(vocab, "Hello", add_bos=added)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_equals_llama_cpp_and_round_trips(tokenizers, variant):
    tokenizer, vocab = tokenizers[variant]
    prefixed = VARIANTS[variant]["add_space_prefix"]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        decoded = tokenizer.decode(ids)
        assert decoded == vocab.detokenize(ids).decode("utf-8"), text
        if "\u2581" in text:
            continue  # an escaped space in the text decodes as a space, in llama.cpp too
        if not prefixed:
            assert decoded == text
        elif not any(symbol.replace("\u2581", " ") in text for symbol in USER_DEFINED):
            # With a space prefix the text comes back behind it, as in llama.cpp; llama.cpp also
            # puts one behind every user-defined token, so those texts are not the same.
            assert decoded == (" " + text if text else ""), text
    ids = [tokenizer.bos_token_id] + tokenizer.encode(CHAT + "Hi!") + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids) == vocab.detokenize(ids, special=True).decode("utf-8")
    # (llama-cpp-python's detokenize drops a leading space after a leading BOS; tfgen keeps it,
    # so that a token's text does not depend on what came before.)
    assert tokenizer.decode(ids, skip_special_tokens=True) == vocab.detokenize(ids[1:]).decode("utf-8")


def test_token_bytes_are_llama_cpp_pieces(tokenizers):
    """Each token's bytes are the ones llama.cpp's token_to_piece writes; control and unknown
    tokens are unknown (None: they end a run of byte pieces), ids past the vocabulary too."""
    tokenizer, vocab = tokenizers["prefix"]
    table = token_bytes(tokenizer, len(tokenizer) + 3)
    assert table[len(tokenizer):] == [None] * 3
    for token, data in enumerate(table[:len(tokenizer)]):
        if token in tokenizer.all_special_ids:
            assert data is None
        else:
            assert data == vocab.detokenize([token]), token
    ids = tokenizer.encode("é日 x\n") + [tokenizer.eos_token_id]
    texts = token_texts(tokenizer, ids)
    assert texts[-1] == "</s>" and "\\xe6" in texts  # 日 is three byte pieces: E6 97 A5
    assert texts[:-1] == [table[i].decode("utf-8", "backslashreplace") for i in ids[:-1]]


def test_chat_template_renders_and_tokenizes(tokenizers):
    tokenizer, vocab = tokenizers["plain"]
    messages = [{"role": "user", "content": "Hi there"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s>" + CHAT
    assert tokenizer.encode(text) == _llama_ids(vocab, text, special=True)


def test_bad_vocabularies_name_the_problem(trained):
    tokens, scores, types = trained[1]
    ids = dict(bos_id=1, eos_id=2, unk_id=0, pad_id=3, add_space_prefix=True, name="x.gguf")
    with pytest.raises(ValueError, match="x.gguf: tokens 5 and 6 are both"):
        model_proto_from_gguf(tokens[:6] + [tokens[5]] + tokens[7:], scores, types, **ids)
    with pytest.raises(ValueError, match="token type 9"):
        model_proto_from_gguf(tokens, scores, types[:10] + [9] + types[11:], **ids)
    with pytest.raises(ValueError, match="255 byte tokens"):
        first_byte = types.index(6)
        model_proto_from_gguf(tokens, scores, types[:first_byte] + [1] + types[first_byte + 1:], **ids)
    with pytest.raises(ValueError, match="eos token id 9999"):
        model_proto_from_gguf(tokens, scores, types, **{**ids, "eos_id": 9999})


def test_unknown_tokenizer_model_names_the_supported_ones(trained, tmp_path):
    path = str(tmp_path / "bert.gguf")
    write_sentencepiece_gguf(path, trained[1], add_space_prefix=True, add_bos_token=True,
                             tokenizer_model="bert")
    with pytest.raises(ValueError, match=r"tokenizer model 'bert'.*'gpt2' \(byte-level BPE\), 'llama' "
                                         r"\(SentencePiece\)"):
        read_gguf(path, use_cache=False)


# -- the real Gemma 3 vocabulary -------------------------------------------------------------------
def test_gemma3_ids_equal_llama_cpp(gemma3):
    """tfgen's tokenizer, and plain SentencePiece on the rebuilt model alone, give llama.cpp's ids."""
    import sentencepiece

    tokenizer, vocab = gemma3
    plain = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    for text in TEXTS + ["<b>bold</b> <table><tr><td>1</td></tr></table>", " " * 40 + "x", "\n" * 40]:
        assert tokenizer.encode(text) == _llama_ids(vocab, text) == plain.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text)) == text.replace("\u2581", " ")
    assert tokenizer.encode(CHAT) == _llama_ids(vocab, CHAT, special=True)
    assert tokenizer.encode("Hi", add_special_tokens=True) == _llama_ids(vocab, "Hi", add_bos=True)


# -- in the graph ------------------------------------------------------------------------------------
def _graph_equals_python(tokenizer, texts):
    import tensorflow as tf

    from tfgen.export.graph_tokenizer import GraphTokenizer

    graph = GraphTokenizer(tokenizer)
    ids = graph.encode(tf.constant(texts))
    assert ids.to_list() == [tokenizer.encode(text) for text in texts]
    decoded = [text.decode("utf-8") for text in graph.decode(ids).numpy().tolist()]
    assert decoded == [tokenizer.decode(row, skip_special_tokens=True) for row in ids.to_list()]
    # Byte pieces that are not UTF-8 on their own, and control tokens between them.
    byte = tokenizer.convert_tokens_to_ids
    odd = [[byte("<0xE6>")], [byte("<0xE6>"), byte("<0x97>"), byte("<0xA5>")],
           [byte("<0xE6>"), tokenizer.eos_token_id, byte("<0x97>"), byte("<0xA5>")]]
    decoded = [text.decode("utf-8") for text in graph.decode(tf.ragged.constant(odd, tf.int32)).numpy()]
    assert decoded == [tokenizer.decode(row, skip_special_tokens=True) for row in odd]
    assert decoded == ["\ufffd", "日", "\ufffd" * 3]


@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_tokenizer_equals_python(tokenizers, variant):
    _graph_equals_python(tokenizers[variant][0], TEXTS + [CHAT])


def test_gemma3_graph_tokenizer_equals_python(gemma3):
    _graph_equals_python(gemma3[0], TEXTS + [CHAT])


# -- a model with a SentencePiece vocabulary ----------------------------------------------------------
@pytest.fixture(scope="module")
def spm_llama(gguf_files, tmp_path_factory):
    """The prefix variant loaded as a model (random weights: its greedy text is gibberish)."""
    with cache.redirected(str(tmp_path_factory.mktemp("cache"))):
        return tfgen.load(f"gguf:{gguf_files['prefix']}")


PROMPTS = ["The quick brown fox", "naïve café 😀", "<tag>x</tag>\n\ty", "  two"]


def test_export_tokenizes_in_the_graph_as_python(spm_llama, tmp_path):
    from tfgen.export.serving_loader import SessionModel, audit_ops

    version = tfgen.export_saved_model(spm_llama, str(tmp_path / "spm"), max_new_tokens=8, batch_buckets=(1,),
                                       prompt_buckets=(16,), strategies=("greedy",), progress=False,
                                       validate=False)  # checked here instead, in this process
    served = SessionModel(version)
    for prompt in PROMPTS:
        ids = spm_llama.prompt_ids(prompt)
        assert ids[0] == spm_llama.tokenizer.bos_token_id and len(ids) <= 16  # the file says add_bos_token
        expected = spm_llama.generate(prompt, max_new_tokens=8)
        text = served.run("serving_default", {"prompt": np.array([prompt.encode()])})["text"][0]
        assert text.decode() == expected
        # The same continuation from the Python side's ids: the graph tokenized the prompt into them.
        out = served.run("generate_ids", {"input_ids": np.array([ids], np.int32),
                                          "attention_mask": np.ones([1, len(ids)], np.int32)})
        new = out["sequences"][0, len(ids):len(ids) + out["num_tokens"][0]].tolist()
        assert prompt + spm_llama.detokenize(new) == expected
    audit = audit_ops(served)
    assert audit["ok"], audit
    assert {"SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp"} <= set(audit["ops"])


def test_stop_strings_end_rows_where_the_text_has_them(spm_llama):
    """In the loop with SentencePiece token bytes: a row ends at the first token whose text holds the
    stop string (counted with plain decoding and str.find), and the text is cut there."""
    from tfgen.decoding.params import left_pad
    gen = spm_llama
    # The export test's batch and length buckets: its program is compiled already.
    params = dict(max_new_tokens=16, do_sample=True, seed=3)
    ids, mask = left_pad([gen.prompt_ids(PROMPTS[0])], gen.lm.pad_token_id)
    free = gen.generate_ids(ids, mask, **params)
    row = free.sequences[0, ids.shape[1]:ids.shape[1] + free.num_generated[0]].tolist()
    text = gen.detokenize(row)
    start = next(i for i in range(len(text) // 3, len(text)) if text[i].strip())
    stop = text[start:start + 2]
    expected = next(n for n in range(1, len(row) + 1) if stop in gen.detokenize(row[:n]))
    stopped = gen.generate_ids(ids, mask, stop=[stop], **params)
    assert stopped.num_generated[0] == expected < free.num_generated[0]
    kept = ids.shape[1] + expected
    assert stopped.sequences[0, :kept].tolist() == free.sequences[0, :kept].tolist()
    assert gen.generate(PROMPTS[0], stop=stop, return_full_text=False, **params) == text[:text.find(stop)]
