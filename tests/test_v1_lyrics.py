"""ACE-Step v1 lyric tokenisation: the fixture's token ids, upstream's language rule, cleaners, vocabulary.

Expected languages, counts and ids below were recorded by running upstream's code (LangSegment 0.3.5,
py3langid 0.3.0, num2words 0.5.14, pypinyin 0.53.0, hangul-romanize 0.1.0, cutlet 0.5.2 + unidic-lite 1.0.8).
"""

from __future__ import annotations

import importlib

import shutil
import sys
from pathlib import Path

import pytest
from v1_fixture import FIXTURE, call_kwargs, cases

from ace_step_ui.errors import InputError, ModelUnavailableError
from ace_step_ui.v1 import cleaners, lyrics, vocab
from ace_step_ui.v1.cleaners import clean_lyric_line, multilingual_clean
from ace_step_ui.v1.language import language_ranking, line_language
from ace_step_ui.v1.lyrics import LyricTokenizer

VOCAB = FIXTURE / "lyric_vocab.json"


@pytest.fixture(scope="module")
def tokenizer() -> LyricTokenizer:
    return LyricTokenizer.from_file(VOCAB)


def recorded_tensors(case: str) -> dict:
    """The case's lyric ids and condition masks (read with NumPy: no torch import needed here)."""
    from safetensors import safe_open

    with safe_open(str(FIXTURE / case / "refs.safetensors"), framework="numpy") as stored:
        return {key: stored.get_tensor(key) for key in stored.keys()
                if key.startswith("lyrics.") or key in ("encode.mask.000", "text.mask.000")}


@pytest.mark.parametrize("case", sorted(cases()))
def test_token_ids_equal_the_fixture(case, tokenizer):
    kwargs = call_kwargs(case, Path("unused"))
    recorded = recorded_tensors(case)
    texts = {"lyrics.token_ids.000": kwargs["lyrics"], "lyrics.token_ids.001": kwargs.get("edit_target_lyrics")}
    for key, text in texts.items():
        if key in recorded:
            assert tokenizer.encode(text) == recorded[key].tolist(), key
    if "lyrics.token_ids.000" not in recorded:  # no lyrics: one masked [STOP] token
        assert kwargs["lyrics"] == ""
        ids, mask = tokenizer.lyric_ids_and_mask(kwargs["lyrics"])
        assert (ids, mask) == ([0], [0])
        encode_mask = recorded["encode.mask.000"][0].tolist()  # [speaker, text..., lyrics...]
        assert len(encode_mask) == 1 + recorded["text.mask.000"].shape[1] + len(mask)
        assert encode_mask[-len(mask):] == mask


def test_ids_and_mask_for_lyrics(tokenizer):
    ids, mask = tokenizer.lyric_ids_and_mask("[verse]\nHello 123 world\n\nMr. Smith & me")
    assert ids == [261, 259, 6683, 2, 259, 62, 84, 28, 2, 28, 111, 2, 2870, 481, 49, 2, 53, 2, 232, 50, 210, 8,
                   40, 2948, 2, 179, 79, 2, 2, 259, 26, 345, 44, 2, 3139, 22, 40, 2, 53, 2, 80, 2]
    assert mask == [1] * len(ids)
    # Only truly empty lyrics are "no lyrics"; blank lines are one [SPACE] each.
    assert tokenizer.lyric_ids_and_mask("  ") == ([261, 2], [1, 1])
    assert tokenizer.encode("a\n\n  \nb") == [261, 259, 14, 2, 2, 2, 259, 15, 2]


@pytest.mark.parametrize("line, language", [
    ("12 34", "zh"),  # digits alone are counted as Chinese
    ("Turn it up 我的 baby", "zh"),  # en gives way to the runner-up
    ("2 hearts", "zh"),
    ("I have 2 hearts in my chest", "en"),
    ("hola mi amor como estas", "en"),  # py3langid: Esperanto, not in the vocabulary
    ("Je t'aime beaucoup mon amour", "en"),
    ("Ich liebe dich mehr als alles auf der Welt", "de"),
    ("Die Straße ist leer und kalt, ich höre nur den Wind", "de"),
    ("Ti amo più di ogni cosa al mondo", "it"),
    ("Eu te amo mais do que tudo nessa vida", "pt"),
    ("Kocham cię bardziej niż wszystko na świecie", "pl"),
    ("Seni seviyorum, gözlerin çok güzel", "tr"),
    ("Я люблю тебя больше жизни", "ru"),
    ("Я кохаю тебе", "ru"),  # every Cyrillic run is taken as Russian
    ("Ik hou van jou meer dan alles", "fr"),
    ("Miluji tě víc než cokoli jiného", "cs"),
    ("Szeretlek jobban mindennél", "hu"),
    ("أحبك أكثر من أي شيء في العالم", "ar"),
    ("我爱你，就像老鼠爱大米", "zh"),
    ("私はあなたを愛しています", "ja"),
    ("<ja>佐々木</ja>さん", "ja"),
    ("사랑해요 정말 많이", "ko"),
    ("मैं तुमसे प्यार करता हूँ", "hi"),
    ("Anh yêu em nhiều lắm", "en"),  # vi and th are not in the vocabulary
    ("ฉันรักเธอ", "en"),
    ("...", "zh"),  # nothing countable: LangSegment's default
    ("iPhone and iPad are Apple products", "en"),
])
def test_line_language_follows_upstream(line, language):
    assert line_language(line) == language


@pytest.mark.parametrize("line, ranking", [
    ("Turn it up 我的 baby", [("en", 17), ("zh", 6)]),  # "Turn it up " counts one extra trailing space
    ("2 hearts", [("en", 9), ("zh", 4)]),
    ("12 34", [("zh", 10)]),
    ("Kocham cię bardziej niż wszystko na świecie", [("pl", 34), ("sv", 9)]),
    ("Miluji tě víc než cokoli jiného", [("cs", 21), ("pl", 8), ("sk", 2)]),
    ("मैं तुमसे प्यार करता हूँ", [("hi", 16), ("mr", 8)]),
    ("<ja>佐々木</ja>さん", [("ja", 5)]),
    ("好的。", [("zh", 6)]),
])
def test_language_counts_follow_upstream(line, ranking):
    assert language_ranking(line) == ranking


def test_structure_tag_lines_are_english(tokenizer):
    assert line_language("[verse]") == "zh"  # what detection says; the tag rule overrides it
    assert tokenizer.encode("[verse]") == [261, 259, 6683, 2]
    assert tokenizer.encode("[chorus] 我的") == [261, 259, 6684, 2, 1, 1, 2]  # Han as [UNK] under [en]


@pytest.mark.parametrize("text, language, cleaned", [
    ("2 hearts", "en", "two hearts"),
    ("I have 2 hearts & $20", "en", "i have two hearts and twenty dollars"),
    ("Mr. Smith, 1st place", "en", "mister smith, first place"),
    ("Das macht 20,15€ Herr.", "de", "das macht zwanzig Euro und fünfzehn Cent herr."),
    ("50 katona volt.", "hu", "ötven katona volt."),
])
def test_cleaners_spell_out_numbers_and_symbols(text, language, cleaned):
    assert clean_lyric_line(text, language) == cleaned


@pytest.mark.parametrize("text, cleaned", [
    ("在12.5秒内, 有50名士兵!", "在十二点五秒内, 有五十名士兵,"),
    ("今天是2024年8月24日，花了12.5元", "今天是二零二四年八月二十四日,花了十二点五元"),
    ("价格上涨了15%，还有1/3的人", "价格上涨了百分之十五,还有三分之一的人"),
    ("电话13812345678", "电话一三八一二三四五六七八"),
    ("两千 2000 200 22 105 1005 100000 0.5", "两千 二零零零 两百 二十二 一百零五 一零零五 一零零零零零 零点五"),
    ("P2P", "p2p"),
    ("12 34", "十二 三十四"),
])
def test_chinese_numbers_become_chinese_words(text, cleaned):
    assert multilingual_clean(text, "zh") == cleaned


@pytest.fixture
def without(monkeypatch):
    """Make an optional package unimportable."""
    def hide(*modules: str) -> None:
        for module in modules:
            monkeypatch.setitem(sys.modules, module, None)
        cleaners._katsu.cache_clear()
    yield hide
    cleaners._katsu.cache_clear()


@pytest.mark.parametrize("line, module, package", [
    ("我爱你，就像老鼠爱大米", "pypinyin", "pip install pypinyin"),
    ("12 34", "pypinyin", "pip install pypinyin"),  # Chinese numerals need pinyin too
    ("사랑해요 정말 많이", "hangul_romanize", "pip install hangul-romanize"),
    ("私はあなたを愛しています", "cutlet", "pip install cutlet fugashi unidic-lite"),
])
def test_missing_optional_package_is_an_input_error(tokenizer, without, line, module, package):
    without(module)
    with pytest.raises(InputError, match=package):
        tokenizer.encode(f"[verse]\n{line}")


def test_chinese_line_without_han_needs_no_pypinyin(tokenizer, without):
    without("pypinyin")
    assert tokenizer.encode("...") == [261, 5023, 7, 7, 7, 2]


def test_a_line_that_fails_to_encode_is_dropped(tokenizer, monkeypatch):
    def clean(text: str, language: str) -> str:
        if text == "bad":
            raise RuntimeError("cannot clean")
        return text

    monkeypatch.setattr(lyrics, "clean_lyric_line", clean)
    assert tokenizer.encode("a\nbad\nb") == [261, 259, 14, 2, 259, 15, 2]  # as upstream: no trace of it


@pytest.mark.parametrize("lyrics_text, module, ids", [
    ("我爱你，就像老鼠爱大米", "pypinyin",
     [261, 5023, 4893, 4568, 27, 4554, 7, 4835, 37, 1164, 4555, 25, 4576, 4628, 4568, 4616, 26, 4554, 2]),
    ("今天是2024年8月24日", "pypinyin",
     [261, 5023, 4764, 33, 1164, 4574, 4557, 4725, 25, 52, 4497, 4725, 4728, 27, 1164, 4596, 4686, 4794, 4725,
      4598, 4728, 4760, 2]),
    ("Turn it up 我的 baby", "pypinyin", [261, 5023, 1375, 27, 2, 60, 2, 152, 2, 4893, 17, 4650, 2, 15, 2647, 2]),
    ("2 hearts", "pypinyin", [261, 5023, 4725, 2, 62, 59, 192, 2]),
    ("사랑해요 정말 많이", "hangul_romanize", [261, 6152, 150, 449, 82, 5806, 8, 1167, 2, 5829, 422, 2, 5918, 8, 22, 2]),
    ("私はあなたを愛しています", "cutlet",
     [261, 5412, 2785, 5244, 120, 22, 2, 465, 2, 14, 680, 14, 2, 366, 2, 752, 120, 921, 2, 22, 1175, 34, 2]),
])
def test_token_ids_with_optional_packages(tokenizer, lyrics_text, module, ids):
    importlib.import_module(module)  # requirements-dev.txt installs the optional language packages
    assert tokenizer.encode(lyrics_text) == ids


# --- vocabulary ---

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.delenv(vocab.VOCAB_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cache_vocab(cache: Path, source: Path) -> Path:
    """Put `source` where hf_hub_download finds the Space's vocab.json (the Hub cache layout)."""
    repo = cache / f"{vocab.VOCAB_REPO_TYPE}s--{vocab.VOCAB_REPO.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    target = repo / "snapshots" / revision / vocab.VOCAB_FILE
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    return target


def test_vocab_from_the_hub_cache(hub_cache):
    cached = cache_vocab(hub_cache, VOCAB)
    assert vocab.lyric_vocab_path() == cached


def test_vocab_missing_says_how_to_get_it(hub_cache, tmp_path):
    with pytest.raises(ModelUnavailableError) as error:
        vocab.lyric_vocab_path(tmp_path / "checkpoint")
    assert "hf download ACE-Step/ACE-Step models/lyrics_utils/vocab.json --repo-type space" in str(error.value)
    assert vocab.VOCAB_ENV in str(error.value)


def test_vocab_with_wrong_bytes_is_refused(hub_cache, tmp_path):
    damaged = tmp_path / "vocab.json"
    damaged.write_bytes(VOCAB.read_bytes()[:-10])
    cache_vocab(hub_cache, damaged)
    with pytest.raises(ModelUnavailableError, match="sha256") as error:
        vocab.lyric_vocab_path()
    assert "--force-download" in str(error.value)


def test_vocab_from_the_environment_and_beside_the_checkpoint(hub_cache, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    beside = checkpoint / "lyrics_utils" / "vocab.json"
    beside.parent.mkdir(parents=True)
    shutil.copyfile(VOCAB, beside)
    assert vocab.lyric_vocab_path(checkpoint) == beside
    monkeypatch.setenv(vocab.VOCAB_ENV, str(VOCAB))
    assert vocab.lyric_vocab_path(checkpoint) == VOCAB  # the variable wins
    monkeypatch.setenv(vocab.VOCAB_ENV, str(tmp_path / "nowhere.json"))
    with pytest.raises(ModelUnavailableError, match="not a file"):
        vocab.lyric_vocab_path(checkpoint)
