"""Text tokenizers for the language backbones: a local pretrained one, or a small byte-level BPE.

A pretrained backbone brings its own tokenizer (``AutoTokenizer``, local files only). A backbone
built from scratch needs one too, and composing a model needs its size *before* any corpus exists
(the vocab layout puts image tokens right after the text vocabulary). So a from-scratch backbone
starts with a deterministic default: a byte-level BPE trained with the ``tokenizers`` library on a
small built-in English corpus (milliseconds), and the training code may later retrain it on its own
captions with ``train_text_tokenizer``. Either way the BPE is trained to, and padded to, exactly
``vocab_size`` tokens: padding entries (``<|reserved_i|>``) sit in the BPE vocabulary where no merge
can reach them, so they are never produced. A fixed size means retraining never moves the image
token ids computed at compose time.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2 in every trained tokenizer

# Common English words plus the vocabulary of the procedural shapes world (colours, shapes,
# positions, edit verbs): enough merges for a few hundred tokens, tiny enough to train in ms.
_WORDS = """
the of and to a in is you that it he was for on are as with his they I at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their if
will up other about out many then them these so some her would make like him into time has look two
more write go see number no way could people my than first water been call who oil its now find long
down day did get come made may part over new sound take only little work know place year live me back
give most very after thing our just name good sentence man think say great where help through much
before line right too mean old any same tell boy follow came want show also around form three small
set put end does another well large must big even such because turn here why ask went men read need
land different home us move try kind hand picture again change off play spell air away animal house
point page letter mother answer found study still learn should world high every near add food between
own below country plant last school father keep tree never start city earth eye light thought head
under story saw left few while along might close something seem next hard open example begin life
always those both paper together got group often run important until children side feet car mile
night walk white sea began grow took river four carry state once book hear stop without second later
miss idea enough eat face watch far real almost let above girl sometimes mountain cut young talk
soon list song being leave family image images photo picture scene shows showing contains there color
colour shape shapes red green blue yellow orange purple pink brown black gray grey cyan magenta circle
circles square squares triangle triangles rectangle star diamond ellipse hexagon left right top bottom
center centre middle corner upper lower above below beside next larger smaller bigger tiny huge one
two three four five six seven eight nine ten zero many how what which where is are there any none
move moved remove removed add added replace replaced make turn turned recolor change changed edit
question answer describe caption generate draw create background foreground object objects count
""".split()
_DIGITS = [str(i) for i in range(100)]
_PUNCT = [".", ",", "?", "!", ":", ";", "'s", "(", ")", "-", '"']


def _default_corpus() -> list[str]:
    """Deterministic lines: each word alone, capitalised, and in short running text with punctuation."""
    lines = [" ".join(_WORDS), " ".join(w.capitalize() for w in _WORDS), " ".join(_DIGITS)]
    for i in range(0, len(_WORDS), 7):
        chunk = _WORDS[i : i + 7]
        lines.append(" ".join(chunk).capitalize() + _PUNCT[i % len(_PUNCT)])
    return lines


def _bpe_json(texts: Iterable[str], vocab_size: int) -> str:
    """Train a byte-level BPE of exactly ``vocab_size`` tokens; return its tokenizer.json text."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs >= {256 + len(SPECIAL_TOKENS)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    n = len(vocab)
    for i in range(vocab_size - n):  # unreachable by any merge: padding only
        vocab[f"<|reserved_{i}|>"] = n + i
    return json.dumps(spec)


def _wrap(tokenizer_json: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


def train_text_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with pad/bos/eos specials (ids 0/1/2), exactly ``vocab_size`` tokens long."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_text_tokenizer needs at least one non-empty text")
    return _wrap(_bpe_json(texts, vocab_size))


@functools.lru_cache(maxsize=8)
def _default_json(vocab_size: int) -> str:
    return _bpe_json(_default_corpus(), vocab_size)


def default_text_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The deterministic built-in tokenizer of a from-scratch backbone (a fresh object every call)."""
    return _wrap(_default_json(vocab_size))


def load_text_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a local transformers folder (never downloads)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"no usable tokenizer in {str(folder)!r} (loaded with local_files_only=True; nothing is downloaded): {e}"
        ) from e
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TypeError(f"tokenizer in {str(folder)!r} is {type(tok).__name__}, need a fast (tokenizers) tokenizer")
    return tok
