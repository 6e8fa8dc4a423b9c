"""ACE-Step v1 lyric tokenisation: the fixture's token ids, upstream's language rule, cleaners, vocabulary.

Expected languages, counts and ids below were recorded by running upstream's code (LangSegment 0.3.5,
py3langid 0.3.0, num2words 0.5.14, pypinyin 0.53.0, hangul-romanize 0.1.0, cutlet 0.5.2 + unidic-lite 1.0.8).
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from v1_fixture import FIXTURE, call_kwargs, cases

from ace_step_ui.errors import InputError, ModelUnavailableError
from ace_step_ui.v1 import cleaners, language, lyrics, vocab
from ace_step_ui.v1.cleaners import clean_lyric_line, multilingual_clean
from ace_step_ui.v1.language import language_ranking, line_language
from ace_step_ui.v1.lyrics import LyricTokenizer


@pytest.fixture(scope="module")
def tokenizer(lyric_vocab) -> LyricTokenizer:
    return LyricTokenizer.from_file(lyric_vocab)


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


def best_seconds(work, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def adversarial_lines(size: int) -> str:
    """Lines that upstream's LangSegment rescans quadratically, or once per match, about `size` long."""
    share = size // 10
    return "\n".join([
        "我 " + "word " * (share // 5),  # a sentence without a full stop
        "“" * share,  # opening quotes and no letter
        "!" * share,  # non-word characters and no digit
        "⑥" + "1" * share,  # a digit run after a placeholder mark
        ", " * (share // 2),  # punctuation parts, joined one by one
        "1," * (share // 2),  # parts too short to classify, joined one by one
        "a. " * (share // 3),  # same-language pieces, merged one by one
        "(我爱你) " * (share // 6),  # bracketed spans, replaced one at a time
        "a我" * (share // 2),  # Latin spans, replaced one at a time
        "x" + "\n" * share,  # a run of newlines
    ])


def test_segmentation_time_grows_in_proportion_to_the_text():
    small, large = adversarial_lines(20_000), adversarial_lines(200_000)
    assert best_seconds(lambda: language_ranking(large)) < 20 * best_seconds(lambda: language_ranking(small))


def test_number_patterns_take_time_in_proportion_to_the_text():
    def clean(size: int) -> None:
        digits = "9" * size
        multilingual_clean(f"{digits} £{digits} {'1.' * (size // 2)}", "en")
        for pattern in (cleaners._ZH_FRACTION, cleaners._ZH_PERCENT, cleaners._ZH_MEASURED,
                        cleaners._ZH_MONEY):
            pattern.findall("我" * size + digits)

    assert best_seconds(lambda: clean(40_000)) < 20 * best_seconds(lambda: clean(4_000))


# Upstream's patterns that language.py and cleaners.py rewrite to run in linear time.
UPSTREAM_SEGMENTATION = {
    "_PLACEHOLDER": r"(⑥\$*\d+[\d]{6,}⑥)",
    "_NUMBER_RUN": r"(\W*\d+\W+\d*\W*\d*)",
    "_LATIN_RUN": rf"""(([【《（(“‘"']*[{language._LATIN_LETTERS}]+[\W\s]*)+)""",
    "_BRACKETED": r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})",
    "_SENTENCE": r"(.*?[。.?？!！]+[\n]{,1})",
}
UPSTREAM_CLEANING = {
    "_DECIMAL": r"([0-9]+[.,][0-9]+)",
    "_ZH_FRACTION": r"(\d+/\d+)",
    "_ZH_PERCENT": r"(\d+(\.\d+)?%)",
    "_ZH_MONEY": rf"\D+((\d+(\.\d+)?)[多余几]?{cleaners._ZH_MONEY_UNIT}(\d{cleaners._ZH_MONEY_UNIT}?)?)",
    "GBP": r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+£))",
    "EUR": r"(([0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))",
    "en": r"([0-9]+)(st|nd|rd|th)",
}
line_characters = st.sampled_from(list("aZé 19,.!?。“‘\"'()（）】⑥$我가\n") + ["⑥$5000001⑥", "1234567"])
amount_characters = st.sampled_from(list("0123456789.,£€%/ a元万块st th") + ["12", "3.5", "1/2"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(line_characters, max_size=40).map("".join))
def test_segmentation_patterns_find_what_upstreams_find(text):
    for name, upstream in UPSTREAM_SEGMENTATION.items():
        ours = getattr(language, name)
        assert (ours.findall(text), ours.split(text)) == (re.findall(upstream, text),
                                                         re.split(upstream, text)), name


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(amount_characters, max_size=30).map("".join))
def test_cleaning_patterns_find_what_upstreams_find(text):
    ours = {"_DECIMAL": cleaners._DECIMAL, "_ZH_FRACTION": cleaners._ZH_FRACTION,
            "_ZH_PERCENT": cleaners._ZH_PERCENT, "_ZH_MONEY": cleaners._ZH_MONEY,
            "GBP": cleaners._CURRENCIES[0][1], "EUR": cleaners._CURRENCIES[2][1],
            "en": cleaners._ORDINAL["en"]}
    for name, upstream in UPSTREAM_CLEANING.items():
        group = 1 if name == "_ZH_MONEY" else 0  # upstream's money pattern is read by its group
        assert ([m.span(group) for m in ours[name].finditer(text)]
                == [m.span(group) for m in re.finditer(upstream, text)]), name


bracketed = st.recursive(
    st.sampled_from(["abc", "我爱你", "x", ""]),
    lambda inner: st.tuples(st.sampled_from("(（“"), inner, st.sampled_from(")）” x"),
                            st.sampled_from(["", " ", ", "])).map("".join)
    | st.lists(inner, min_size=2, max_size=3).map(" ".join), max_leaves=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(bracketed, st.sampled_from(["", "\n", "\n\n"]))
# Upstream's loop: the second key takes "(ab ⑥…⑥ x) (", across the first, and "(fgh)" loses its "(".
@example("(ab (cde) x) (fgh) (ijk)", "")
@example("(a (bb (cde) x) y) (fgh) (ijk) (lmn)", "\n")
def test_bracketed_spans_are_hidden_as_upstreams_loop_hides_them(line, newlines):
    line += newlines  # a line has newlines only at its end
    upstream = UPSTREAM_SEGMENTATION["_BRACKETED"]
    keys = [f"⑥$4{index:06d}⑥" for index in range(len(re.findall(upstream, line)))]
    expected = line
    for key in keys:
        expected = re.sub(upstream, key, expected, count=1)
    assert language._hide_brackets_one_at_a_time(line, keys) == expected


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


def test_vocab_from_the_hub_cache(hub_cache, lyric_vocab):
    cached = cache_vocab(hub_cache, lyric_vocab)
    assert vocab.lyric_vocab_path() == cached


def test_vocab_missing_says_how_to_get_it(hub_cache, tmp_path):
    with pytest.raises(ModelUnavailableError) as error:
        vocab.lyric_vocab_path(tmp_path / "checkpoint")
    assert "hf download ACE-Step/ACE-Step models/lyrics_utils/vocab.json --repo-type space" in str(error.value)
    assert vocab.VOCAB_ENV in str(error.value)


def test_local_vocab_is_the_variable_or_the_cache_never_a_download(hub_cache, lyric_vocab, monkeypatch):
    assert vocab.local_lyric_vocab() is None
    cached = cache_vocab(hub_cache, lyric_vocab)
    assert vocab.local_lyric_vocab() == cached
    monkeypatch.setenv(vocab.VOCAB_ENV, str(lyric_vocab))
    assert vocab.local_lyric_vocab() == lyric_vocab


def test_vocab_with_wrong_bytes_is_refused(hub_cache, tmp_path, lyric_vocab):
    damaged = tmp_path / "vocab.json"
    damaged.write_bytes(lyric_vocab.read_bytes()[:-10])
    cache_vocab(hub_cache, damaged)
    with pytest.raises(ModelUnavailableError, match="sha256") as error:
        vocab.lyric_vocab_path()
    assert "--force-download" in str(error.value)


def test_vocab_from_the_environment_and_beside_the_checkpoint(hub_cache, tmp_path, monkeypatch, lyric_vocab):
    checkpoint = tmp_path / "checkpoint"
    beside = checkpoint / "lyrics_utils" / "vocab.json"
    beside.parent.mkdir(parents=True)
    shutil.copyfile(lyric_vocab, beside)
    assert vocab.lyric_vocab_path(checkpoint) == beside
    monkeypatch.setenv(vocab.VOCAB_ENV, str(lyric_vocab))
    assert vocab.lyric_vocab_path(checkpoint) == lyric_vocab  # the variable wins
    monkeypatch.setenv(vocab.VOCAB_ENV, str(tmp_path / "nowhere.json"))
    with pytest.raises(ModelUnavailableError, match="not a file"):
        vocab.lyric_vocab_path(checkpoint)
