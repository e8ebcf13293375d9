"""tfgen.bpe_tokenizer.BPETokenizer against transformers' PreTrainedTokenizerFast over the same
`tokenizers` backend (the reference: what tfgen used before, and what users compare with), and
loading a GGUF model without importing transformers.

The HF-directory path (`tokenizer_from_directory`) is checked against `AutoTokenizer` in
test_hf_tokenizers.py, KerasHub vocabularies against KerasHub's own tokenizers in test_keras_hub.py.
"""
import os
import random
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from tfgen.bpe_tokenizer import BPETokenizer, bytes_to_unicode, clean_up_tokenization
from tfgen.loading import packaged_gguf_path
from tfgen.models.gguf import read_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHABET = list("abc XYZ 0123\n\t.,!?'-日本🎉<|>_é") + [" n't", " 's", " .", "<|im_start|>", "<|im_end|>",
                                                      "<|endoftext|>", "<extra>", "  ", "\n\n"]


def texts():
    rng = random.Random(0)
    fixed = ["Hello world", "<|im_start|>user\nhi<|im_end|>", "  spaces\n\n\tand tabs 12345 ünïcödé 日本語 🎉",
             "<|endoftext|>x", "def f(x):\n    return x**2\n", "I can't , they 're here ."]
    return fixed + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))) for _ in range(300)]


@pytest.fixture(scope="module")
def smol_gguf():
    return read_gguf(packaged_gguf_path("smollm2-135m"))


def pair(model, **extra):
    """(ours, transformers') over two copies of the GGUF's backend, with the GGUF's special tokens."""
    from transformers import PreTrainedTokenizerFast

    special = model.special
    names = dict(bos_token=special["bos_token"], eos_token=special["eos_token"], pad_token=special["pad_token"],
                 unk_token=special.get("unk_token"), chat_template=special.get("chat_template"), **extra)
    ours = BPETokenizer(Tokenizer.from_str(model.tokenizer_json), **names)
    theirs = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(model.tokenizer_json), **names)
    return ours, theirs


@pytest.mark.parametrize("extra", [{}, {"additional_special_tokens": ["<extra>"]},
                                   {"clean_up_tokenization_spaces": True}], ids=["gguf", "added", "clean-up"])
def test_equals_transformers_fast_tokenizer(smol_gguf, extra):
    ours, theirs = pair(smol_gguf, **extra)
    for text in texts():
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(text, add_special_tokens=special), text
        ids = theirs.encode(text)
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
        for skip in (False, True):
            for clean in (False, True, None):
                assert (ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                        == theirs.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)), text
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert ours.all_special_ids == theirs.all_special_ids
    assert (len(ours), ours.vocab_size, ours.get_vocab()) == (len(theirs), theirs.vocab_size, theirs.get_vocab())
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.convert_tokens_to_ids(["<|im_end|>", "not-a-token"]) == theirs.convert_tokens_to_ids(
        ["<|im_end|>", "not-a-token"])


def test_chat_template_equals_transformers(smol_gguf):
    ours, theirs = pair(smol_gguf)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <there>"}]
    for prompt in (False, True):
        for tokenize in (False, True):
            assert (ours.apply_chat_template(conversation, tokenize=tokenize, add_generation_prompt=prompt)
                    == theirs.apply_chat_template(conversation, tokenize=tokenize, add_generation_prompt=prompt))


def test_byte_map_and_clean_up_are_transformers():
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode as reference

    assert bytes_to_unicode() == reference()
    for text in texts():
        assert clean_up_tokenization(text) == PreTrainedTokenizerFast.clean_up_tokenization(text)


def test_bad_input_names_the_problem(smol_gguf):
    ours, _ = pair(smol_gguf)
    with pytest.raises(TypeError, match="text must be a string"):
        ours.encode(["not", "text"])
    with pytest.raises(ValueError, match="no chat template"):
        BPETokenizer(Tokenizer.from_str(smol_gguf.tokenizer_json)).apply_chat_template([])


def test_loading_a_gguf_model_does_not_import_transformers(smol_gguf):
    script = ("import sys, tfgen\n"
              "g = tfgen.load('smollm2-135m')\n"
              "assert g.detokenize(g.tokenize('Hello world')) == 'Hello world'\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
