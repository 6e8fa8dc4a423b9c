"""Lyrics to ACE-Step v1 lyric-encoder token ids, as upstream's `ACEStepPipeline.tokenize_lyrics` makes them.

`[START]`, then for every line: nothing but `[SPACE]` for an empty line; else the line's language token,
its cleaned text with spaces as `[SPACE]`, BPE pieces, and `[SPACE]` to end the line. Lines that start with
a `[...]` tag (structure tags like `[verse]`) are always English; other lines get `language.line_language`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .cleaners import clean_lyric_line
from .language import line_language

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

START_ID = 261  # [START]
SPACE_ID = 2  # [SPACE]: between words, after every line, and for an empty line
STOP_ID = 0  # [STOP]: the single masked token upstream feeds when there are no lyrics
# Upstream trains on at most this many lyric tokens (text2music_dataset.py keeps lyric_token_idx[:4096])
# and its pipeline feeds the lyric Conformer any number, whose attention grows with the square of it
# (4,096 tokens peak at 5.6 GB in float32; 20,000 need 25.6 GB for one score tensor). We refuse more.
MAX_LYRIC_TOKENS = 4096
_STRUCTURE_TAG = re.compile(r"\[.*?\]")


class LyricTokenizer:
    """The lyric vocabulary (a Hugging Face `tokenizers` BPE) with upstream's per-line rules."""

    def __init__(self, bpe: Tokenizer):
        self.bpe = bpe

    @classmethod
    def from_file(cls, vocab_path: Path) -> LyricTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(vocab_path)))

    def encode_line(self, line: str, language: str) -> list[int]:
        """One non-empty line in `language` (without the line-ending [SPACE])."""
        text = clean_lyric_line(line, language)
        prefix = "zh-cn" if language == "zh" else language  # the vocabulary's Chinese token is [zh-cn]
        return self.bpe.encode(f"[{prefix}]{text}".replace(" ", "[SPACE]")).ids

    def encode(self, lyrics: str) -> list[int]:
        ids = [START_ID]
        for line in lyrics.split("\n"):
            line = line.strip()
            if not line:
                ids.append(SPACE_ID)
                continue
            language = "en" if _STRUCTURE_TAG.match(line) else line_language(line)
            try:
                ids += self.encode_line(line, language) + [SPACE_ID]
            except InputError:
                raise
            except Exception as error:  # upstream drops a line it cannot encode and goes on
                logger.warning("lyric line %r (%s) skipped: %s", line, language, error)
        return ids

    def lyric_ids_and_mask(self, lyrics: str) -> tuple[list[int], list[int]]:
        """What the pipeline feeds the lyric encoder: the ids and an all-ones mask, or one masked [STOP]."""
        if not lyrics:
            return [STOP_ID], [0]
        ids = self.encode(lyrics)
        return ids, [1] * len(ids)
