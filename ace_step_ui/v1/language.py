"""Which language ACE-Step v1 tokenises each lyric line as.

Upstream (`ACEStepPipeline.get_lang`) runs every line through its vendored LangSegment 0.3.5, with all
97 py3langid 0.3.0 languages as filters, and takes the language with the most characters (Han
characters count twice); "en" gives way to the runner-up when anything else was found, and a language
the lyric vocabulary lacks becomes "en". LangSegment is a pile of heuristics whose quirks decide the
tokens ("12 34" and "2 hearts" are Chinese, Spanish is mostly Esperanto and so English), so this module
re-implements the parts that configuration reaches, in three steps per line:

1. hide: spans matched by script rules (inline `<tag>…</tag>`, Hangul, Thai, Cyrillic, numbers, Latin,
   quotes) are replaced by placeholders, rule by rule;
2. walk: text between placeholders is split at punctuation and classified with py3langid, with
   LangSegment's zh/ja guesses for short Han runs; each placeholder goes to its rule's handler;
3. record: pieces merge with a same-language or number-only neighbour and their characters are counted.

LangSegment's regexes and loops rescan text (a run of quotes from each of its characters, a sentence
without a full stop from each of its words, the line once per bracketed span); here each step takes
time in proportion to the line, with the same results.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

# The languages with a `[lang]` token in the lyric vocabulary (upstream SUPPORT_LANGUAGES).
SUPPORTED_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "pl", "tr", "ru", "cs", "nl", "ar", "zh", "ja",
                       "hu", "ko", "hi")

# Placeholder for a hidden span: "⑥" + rule tag + 6-digit index + "⑥" (number rule tags are digits).
# Upstream writes \d+[\d]{6,}: the same matches, but it backtracks quadratically on a long digit run.
_PLACEHOLDER = re.compile(r"(⑥\$*\d{7,}⑥)")
_NUMBER_PLACEHOLDER = re.compile(r"(⑥\d{6,}⑥)")
_OPENING_QUOTES = "【《（(“‘\"'"


def _script_run(letters: str) -> re.Pattern[str]:
    """A run of words in one script, with opening quotes before and punctuation/space after each.

    No match starts just after an opening quote (upstream's never does: it starts at the first one),
    so a long run of quotes is not rescanned from each of its characters.
    """
    return re.compile(rf"""(?<![{_OPENING_QUOTES}])(([{_OPENING_QUOTES}]*[{letters}]+[\W\s]*)+)""")


# With "fr" and "vi" among the filters LangSegment's preview mode is on: these lowercase accented
# letters count as Latin script (uppercase accented letters and ß do not).
_LATIN_LETTERS = ("a-zA-Z" "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"
                  "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ")

_INLINE_TAG = re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)")
_HANGUL_RUN = _script_run("\uac00-\ud7a3")
_THAI_RUN = _script_run("\u0e00-\u0e7f")
_CYRILLIC_RUN = _script_run("А-Яа-яЁё")
# Upstream's (\W*\d+\W+\d*\W*\d*): its matches never start inside a run of \W or of digits, and not
# trying there keeps such runs from being rescanned from each of their characters.
_NUMBER_RUN = re.compile(r"(?<!\W)(?:(?<!\d)|(?!\d))(\W*\d+\W+\d*\W*\d*)")
_LATIN_RUN = _script_run(_LATIN_LETTERS)
_QUOTED = re.compile(r"""(["'])(.*?)(\1)""")
# (?<!\n): not from inside a run of newlines, where upstream's match never starts either.
_BRACKETED = re.compile(r"((?<!\n)[\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})")
_OPENING_BRACKETS, _CLOSING_BRACKETS = "【《（(“‘", "’”)）》】"
_BRACKET = re.compile(r"[【《（(“‘’”)）》】]")
_BRACKET_TAIL = re.compile(r"[\W\s]*[\n]{,1}")

# Upstream's (.*?[。.?？!！]+[\n]{,1}), splitting the same way, without rescanning a sentence that has
# no full stop from each of its characters.
_SENTENCE = re.compile(r"((?<![^。.?？!！\n])[^。.?？!！\n]*[。.?？!！]+[\n]{,1})")
_PUNCTUATION = re.compile(r"([^\w\s]+)")
_KANA = re.compile(r"[\u3040-\u309F\u30A0-\u30FF]+")
_WORD = re.compile(r"\w")
_JA_ZH_THRESHOLD = 0.89  # LangPriorityThreshold: below it a short Han run is taken as Japanese


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=1)
def _filter_languages() -> tuple[str, ...]:
    """LangSegment's default filter list: exactly py3langid's 97 languages, sorted."""
    return tuple(sorted(_identifier().nb_classes))


@lru_cache(maxsize=4096)  # lyrics repeat lines and words, and py3langid is the costly step
def _classify(text: str) -> tuple[str, float]:
    language, probability = _identifier().classify(text)
    return language, round(float(probability), 3)


def _squeeze(text: str) -> str:
    """LangSegment's text for classification: punctuation runs to one space, repeated characters to one."""
    return re.sub(r"(.)\1+", r"\1", re.sub(r"\W+", " ", text)).strip()


def _is_punctuation(text: str) -> bool:
    return not _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip()


def _number_only(text: str) -> bool:
    """Whether the text without punctuation is only digits (or nothing)."""
    if text == "\n":
        return False
    return not re.sub(r"\d+", "", _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip())


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def _spaced_capitals(text: str) -> str:
    """LangSegment's English text: a space before capitals inside words ("iPhone" -> "i Phone"), one after."""
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


def _last_visible_char(text: str) -> str | None:
    squeezed = re.sub(r"\s+", "", text)
    return squeezed[-1] if squeezed else None


def _ssml_digits(text: str) -> str:
    """LangSegment's <number> reading: each ASCII digit as a Chinese numeral, other digits dropped."""
    return re.sub(r"\d", lambda digit: ("零一二三四五六七八九"[int(digit.group(0))]
                                      if digit.group(0) in "0123456789" else ""), text).replace(".", "点")


class _Piece:
    """Text in one language; what merges into it is joined once, when its text is read."""

    def __init__(self, lang: str, text: str, tag: object = None):
        self.lang = lang
        self.tag = tag  # None: plain text; True: an inline <lang>…</lang> tag; str: another tag's name
        self._parts = [text]

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]

    def extend(self, text: str) -> None:
        self._parts.append(text)


class _ShortText:
    """Whether the parts added so far squeeze (`_squeeze` without digits and number placeholders)
    to at most two characters, kept up to date part by part: squeezing only merges where they meet."""

    def __init__(self) -> None:
        self.length = 0
        self.first = self.last = ""

    def add(self, part: str) -> bool:
        digitless = re.sub(r"\d+", "", _NUMBER_PLACEHOLDER.sub("", part))
        squeezed = re.sub(r"(.)\1+", r"\1", re.sub(r"\W+", " ", digitless))
        if squeezed[:1] == self.last:
            squeezed = squeezed[1:]
        if squeezed:
            self.first = self.first or squeezed[0]
            self.last = squeezed[-1]
            self.length += len(squeezed)
        return self.length - (self.first == " ") - (self.last == " " and self.length > 1) <= 2


class _Segmentation:
    """One LangSegment run over one text: its pieces and per-language character counts."""

    def __init__(self, text: str):
        self.languages = _filter_languages()
        self.filter_string = "-".join(self.languages)
        self.counts: dict[str, int] | None = None
        self.waiting: list[_Piece] = []
        self.hidden: dict[str, tuple[Callable[[list[_Piece], Any], None], Any]] = {}
        self.last_segment = False
        rules = (("$1", _INLINE_TAG, self._inline_tag), ("$6", _HANGUL_RUN, self._script("ko")),
                 ("$8", _THAI_RUN, self._script("th")), ("$7", _CYRILLIC_RUN, self._script("ru")),
                 ("00", _NUMBER_RUN, self._number), ("$5", _LATIN_RUN, self._latin),
                 ("$3", _QUOTED, self._quoted), ("$4", _BRACKETED, self._quoted))
        for line in re.findall(r".*\n*", _PLACEHOLDER.sub("", text)):
            if not line.strip():
                continue
            self.last_segment = False
            self.hidden = {}
            for tag, pattern, handler in rules:
                line = self._hide(tag, pattern, handler, line)
            self._walk([], line, root=True)  # each line starts a new piece list

    def ranking(self) -> list[tuple[str, int]]:
        if self.counts is None:
            return [("zh", 0)]  # nothing counted: LangSegment's default answer
        if not self.counts:
            raise LookupError("no countable language")  # upstream fails here and falls back to "en"
        return sorted(self.counts.items(), key=lambda item: item[1], reverse=True)

    def _hide(self, tag: str, pattern: re.Pattern[str], handler: Callable, text: str) -> str:
        """Upstream replaces the matches one at a time, each time the first match in the text so far:
        for all rules but the bracketed one, that is the matches of one pass."""
        found = pattern.findall(text)
        if len(found) == 1 and "".join(found[0]) == text:
            return text  # a text that is one whole match stays as it is
        keys = [f"⑥{tag}{index:06d}⑥" for index in range(len(found))]
        for key, match in zip(keys, found):
            self.hidden[key] = (handler, match)
        if pattern is _BRACKETED:
            return _hide_brackets_one_at_a_time(text, keys)
        next_key = iter(keys).__next__
        return pattern.sub(lambda _: next_key(), text)

    def _walk(self, words: list[_Piece], text: str, root: bool) -> None:
        segments = _PLACEHOLDER.split(text)
        for index, segment in enumerate(segments):
            if root:
                self.last_segment = index >= len(segments) - 1
            if _PLACEHOLDER.match(segment):
                handler, match = self.hidden[segment]
                handler(words, match)
            else:
                self._classify_run(words, segment)

    def _inline_tag(self, words: list[_Piece], match: tuple[str, str, str]) -> None:
        _, name, content = match
        if name in self.filter_string:  # a substring test, as upstream's
            self._add(words, name, content, tag=True)
            return
        language = name
        if name == "number":
            language, content = "zh", _ssml_digits(content)
        elif name == "telephone":
            language, content = "zh", _ssml_digits(content.replace("+86", "")).replace("一", "幺")
        elif name in ("currency", "date"):
            # Deviation: upstream also rewrites the content as Chinese words; we count it unchanged.
            language = "zh"
        self._add(words, language, content, tag=name)

    def _script(self, language: str) -> Callable[[list[_Piece], tuple[str, str]], None]:
        return lambda words, match: self._add(words, language, match[0])

    def _number(self, words: list[_Piece], match: str) -> None:
        self._add(words, words[0].lang if words else "zh", match)

    def _latin(self, words: list[_Piece], match: tuple[str, str]) -> None:
        for sentence in _SENTENCE.split(match[0]):
            if not sentence.strip():
                continue
            language, score = _classify(_squeeze(sentence))
            if score > 0.0:  # py3langid only names filter languages, so LangSegment keeps its answer
                self._add(words, language, sentence)

    def _quoted(self, words: list[_Piece], match: tuple[str, str, str]) -> None:
        text = "".join(match)
        if _PLACEHOLDER.findall(text):
            self._walk(words, text, root=False)
            return
        inner = _squeeze(match[1])
        if len(inner) <= 5:
            self._classify_run(words, text)
        else:
            self._add(words, _classify(inner)[0], text)

    def _classify_run(self, words: list[_Piece], segment: str) -> None:
        """The segment split at punctuation; a part joins the next while it or the next is only
        punctuation, or while it is too short for py3langid. Upstream re-reads the joined text at
        each part; its two tests are kept up to date here instead."""
        parts = _PUNCTUATION.split(segment)
        at_line_end = self.last_segment
        joined: list[str] = []
        has_word, short = False, _ShortText()
        for index, part in enumerate(parts):
            if not joined and not part:
                continue
            joined.append(part)
            has_word = has_word or _WORD.search(part) is not None
            final = index >= len(parts) - 1
            if not final and (not has_word or _is_punctuation(parts[index + 1])):
                short.add(part)
                continue
            if not final and short.add(part):
                continue
            text = "".join(joined)
            joined, has_word, short = [], False, _ShortText()
            cleaned = _squeeze(re.sub(r"\d+", "", _NUMBER_PLACEHOLDER.sub("", text)))
            language, score = _classify(cleaned)
            previous = words[-1].lang if words else None
            if language != "zh" and all(_is_han(char) for char in re.sub(r"\s", "", cleaned)):
                language, score = "zh", 1.0
            if len(cleaned) <= 5 and any(_is_han(char) for char in cleaned):
                language = self._short_han_language(
                    language, score, cleaned, text, previous, bool(words), final and at_line_end)
            text = _NUMBER_PLACEHOLDER.sub(lambda key: self._unhide_number(key.group(0)), text)
            self._add(words, language, text)

    def _short_han_language(self, language: str, score: float, cleaned: str, text: str,
                            previous: str | None, has_words: bool, ends_line: bool) -> str:
        """LangSegment's guess for at most five characters with Han in them: maybe "zh|ja|…" (undecided)."""
        if score < _JA_ZH_THRESHOLD:
            language = "ja"  # the filter list names ja before zh
        if _KANA.search(cleaned):
            return "ja"
        if len(cleaned) > 2 and score > 0.90:
            return language
        if ends_line:
            return "zh" if len(cleaned) <= 1 else language
        undecided = ("zh|ja" if language == "zh" or (len(cleaned) <= 2 and previous == "zh")
                     else "ja|zh")
        related = bool(previous is not None and (previous in undecided or undecided in previous))
        if _last_visible_char(text) in "。.":  # never None here: `cleaned` has a Han character
            return previous if related and has_words else language
        return f"{undecided}|…"

    def _unhide_number(self, key: str) -> str:
        return self.hidden[key][1] if key in self.hidden else key

    def _add(self, words: list[_Piece], language: str | None, text: str, tag: object = None) -> None:
        if text != "\n" and not text.strip():
            return
        language = (language or "").lower()
        if language == "en":
            text = _spaced_capitals(text)
        from_waiting = bool(self.waiting)
        previous = self.waiting.pop() if from_waiting else (words[-1] if words else None)
        if previous is not None and "|" in previous.lang:
            if language in previous.lang:  # substring test, as upstream's
                language = previous.lang = language.split("|")[0]
            else:
                previous.lang = previous.lang.split("|")[0]
            if from_waiting:
                previous = self._record(words, previous.lang, previous.text, previous.tag)
        previous_lang = previous.lang if previous is not None else None
        if "|" in language and previous_lang and previous_lang not in language and "…" not in language:
            language = language.split("|")[0]
        if "|" in language:
            # Undecided zh/ja: the next piece decides; a piece still waiting at the end is never counted.
            self.waiting.append(_Piece(language, text, tag))
        else:
            self._record(words, language, text, tag)

    def _record(self, words: list[_Piece], language: str, text: str, tag: object) -> _Piece:
        previous = words[-1] if words else None
        if tag is None and previous is not None and previous.tag is None:
            if _number_only(text):
                language = previous.lang
            if previous.lang == language:
                self._count(language, text)
                previous.extend(text)
                return previous
            if _number_only(previous.text):
                # A number-only piece joins the next one (its characters stay counted where they were).
                text = previous.text + text
                words.pop()
        piece = _Piece(language, text, tag)
        # Kept when a filter language; upstream's substring test against "af" also keeps "", "a", "f".
        if "?" in language or language in self.languages or language in self.languages[0]:
            words.append(piece)
            self._count(language, text)
        return piece

    def _count(self, language: str, text: str) -> None:
        if self.counts is None:
            self.counts = {}
        if "|" not in language:
            self.counts[language] = self.counts.get(language, 0) + len(text) * (2 if language == "zh" else 1)


def _hide_brackets_one_at_a_time(line: str, keys: list[str]) -> str:
    """`for key in keys: line = _BRACKETED.sub(key, line, count=1)`, in one pass over the line.

    A replaced span can let an opening bracket before it match anew, across the key, up to a later
    closing bracket. Only the last bracket before the keys can, so the brackets passed are stacked.
    The line has newlines only at its end, as `_Segmentation` cuts lines.
    """
    pieces: list[list[Any]] = []  # the new line so far: [string, start, end] slices
    brackets: list[tuple[int, int, str]] = []  # those in the pieces: (piece, position, character)
    rest = 0  # start of the part of `line` not passed yet
    for key in keys:
        if brackets and brackets[-1][2] in _OPENING_BRACKETS:
            closing = _BRACKET.search(line, rest)
            if closing and closing.group() in _CLOSING_BRACKETS:
                piece, position, _ = brackets.pop()
                del pieces[piece + 1:]
                pieces[piece][2] = position
                pieces.append([key, 0, len(key)])
                rest = _BRACKET_TAIL.match(line, closing.end()).end()
                continue
        match = _BRACKETED.search(line, rest)
        if match is None:
            break
        pieces.append([line, rest, match.start()])
        brackets += [(len(pieces) - 1, bracket.start(), bracket.group())
                     for bracket in _BRACKET.finditer(line, rest, match.start())]
        pieces.append([key, 0, len(key)])
        rest = match.end()
    pieces.append([line, rest, len(line)])
    return "".join(string[start:end] for string, start, end in pieces)


def language_ranking(text: str) -> list[tuple[str, int]]:
    """LangSegment's languages of `text` with their character counts (Han x2), most first.

    Raises LookupError in the one case where upstream's LangSegment fails (nothing countable found).
    """
    if not text.strip():
        return [("zh", 0)]
    return _Segmentation(text).ranking()


def line_language(line: str) -> str:
    """The language code (one of SUPPORTED_LANGUAGES) ACE-Step v1 tokenises a lyric line as."""
    try:
        ranking = language_ranking(line)
        language = ranking[0][0]
        if language == "en" and len(ranking) > 1:
            language = ranking[1][0]
    except Exception:  # upstream's get_lang answers "en" whenever LangSegment fails
        language = "en"
    return language if language in SUPPORTED_LANGUAGES else "en"
