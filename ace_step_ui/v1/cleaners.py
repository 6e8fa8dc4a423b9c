"""Text cleaning before ACE-Step v1's lyric BPE: the rules of upstream's `VoiceBpeTokenizer.preprocess_text`.

Most languages: drop '"', lowercase, numbers to words (num2words; Chinese by its own reading rules below),
expand abbreviations and symbols, collapse whitespace. Chinese then becomes pinyin with tone numbers
(pypinyin), Korean is romanised (hangul-romanize); Japanese goes to romaji (cutlet) instead, Hindi is only
lowercased. Upstream copied these rules from coqui XTTS; the tables below are its tables.

pypinyin, hangul-romanize and cutlet are optional: a line that needs one raises `InputError` naming the
package. A Chinese line without Han characters (after numbers became words) needs no pypinyin, a Korean
line without Hangul needs no hangul-romanize: both would return such text unchanged.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Any, Callable

from num2words import num2words

from ..errors import InputError

_MULTILINGUAL = ("ar", "cs", "de", "en", "es", "fr", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko")
CLEANED_LANGUAGES = _MULTILINGUAL + ("ja", "hi")

_ABBREVIATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
           ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
           ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
           ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort")),
    "es": (("sra", "señora"), ("sr", "señor"), ("dr", "doctor"), ("dra", "doctora"), ("st", "santo"),
           ("co", "compañía"), ("jr", "junior"), ("ltd", "limitada")),
    "fr": (("mme", "madame"), ("mr", "monsieur"), ("dr", "docteur"), ("st", "saint"), ("co", "compagnie"),
           ("jr", "junior"), ("ltd", "limitée")),
    "de": (("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")),
    "pt": (("sra", "senhora"), ("sr", "senhor"), ("dr", "doutor"), ("dra", "doutora"), ("st", "santo"),
           ("co", "companhia"), ("jr", "júnior"), ("ltd", "limitada")),
    "it": (("sig", "signore"), ("dr", "dottore"), ("st", "santo"), ("co", "compagnia"), ("jr", "junior"),
           ("ltd", "limitata")),
    "pl": (("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")),
    "cs": (("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")),
    "ru": (("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")),
    "nl": (("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")),
    "tr": (("b", "bay"), ("byk", "büyük"), ("dr", "doktor")),
    "hu": (("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")),
}

_SYMBOLS = ("&", "@", "%", "#", "$", "£", "°")
_SYMBOL_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}

# Upstream's patterns scan a run of digits again from each of its digits; a match never starts
# inside one, so `(?<![0-9])` (and `(?<!\d)` below) skips those starts and keeps a long run linear.
_AFTER_NO_DIGIT = r"(?<![0-9])"
_ORDINAL = {language: re.compile(_AFTER_NO_DIGIT + pattern) for language, pattern in {
    "en": r"([0-9]+)(st|nd|rd|th)",
    "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
    "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
    "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
    "pt": r"([0-9]+)(º|ª|o|a|os|as)",
    "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
    "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
    "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
    "cs": r"([0-9]+)\.(?=\s|$)",
    "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
    "nl": r"([0-9]+)(de|ste|e)",
    "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
    "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
    "ko": r"([0-9]+)(번째|번|차|째)",
}.items()}
# What num2words leaves after the whole units of an amount ("twenty euro, zero cents").
_CURRENCY_AND = {"en": ", ", "es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e ",
                 "pl": ", ", "cs": ", ", "ru": ", ", "nl": ", ", "ar": ", ", "tr": ", ", "hu": ", ", "ko": ", "}
# Upstream's amounts end in [0-9]+ (before or after the symbol), which backtracks cubically on a long
# run of digits; one digit there matches the same spans, and an amount never starts inside a run of
# digits, dots and commas (only group 0 is used).
_CURRENCIES = (
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9])|((?<![0-9\.\,])[0-9\.\,]*[0-9]£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9])|((?<![0-9\.\,])[0-9\.\,]*[0-9]\$))")),
    ("EUR", re.compile(r"(((?<![0-9\.\,])[0-9\.\,]*[0-9]€)|((€[0-9\.\,]*[0-9])))")),
)
_THOUSANDS_COMMA = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")
_THOUSANDS_DOT = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # sic: "." matches any character upstream
_DECIMAL = re.compile(_AFTER_NO_DIGIT + r"([0-9]+[.,][0-9]+)")
_INTEGER = re.compile(r"[0-9]+")


def clean_lyric_line(text: str, language: str) -> str:
    """One lyric line as upstream hands it to the BPE for `language` (a key of CLEANED_LANGUAGES)."""
    if language in _MULTILINGUAL:
        text = multilingual_clean(text, language)
        if language == "zh":
            return _pinyin(text)
        if language == "ko":
            return _romanize_korean(text)
        return text
    if language == "ja":
        return _romaji(text)
    if language == "hi":
        return collapse_whitespace(text.lower())
    raise ValueError(f"no lyric cleaner for language {language!r}")


def multilingual_clean(text: str, language: str) -> str:
    text = text.replace('"', "")
    if language == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    try:
        text = chinese_numbers_to_words(text) if language == "zh" else numbers_to_words(text, language)
    except Exception:  # upstream keeps the text unchanged when num2words fails (e.g. huge numbers)
        pass
    text = expand_abbreviations(text, language)
    text = expand_symbols(text, language)
    return collapse_whitespace(text)


def collapse_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def expand_abbreviations(text: str, language: str) -> str:
    # Russian abbreviations carry no dot: they end at a word boundary instead.
    ending = r"\b" if language == "ru" else r"\."
    for abbreviation, expansion in _ABBREVIATIONS.get(language, ()):
        text = re.sub(rf"\b{abbreviation}{ending}", expansion, text, flags=re.IGNORECASE)
    return text


def expand_symbols(text: str, language: str) -> str:
    for symbol, word in zip(_SYMBOLS, _SYMBOL_WORDS[language]):
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


def numbers_to_words(text: str, language: str) -> str:
    """Amounts, decimals, ordinals and integers spelled out with num2words (any language but zh)."""
    words_language = "cz" if language == "cs" else language  # num2words' code for Czech
    if language in ("en", "ru"):
        text = _THOUSANDS_COMMA.sub(lambda match: match.group(0).replace(",", ""), text)
    else:
        text = _THOUSANDS_DOT.sub(lambda match: match.group(0).replace(".", ""), text)
    try:
        for currency, pattern in _CURRENCIES:
            text = pattern.sub(lambda match: _amount_words(match.group(0), language, currency), text)
    except Exception:  # upstream skips the remaining currencies when one fails
        pass
    if language != "tr":
        text = _DECIMAL.sub(
            lambda match: num2words(float(match.group(1).replace(",", ".")), lang=words_language), text)
    text = _ORDINAL[language].sub(
        lambda match: num2words(int(match.group(1)), ordinal=True, lang=words_language), text)
    return _INTEGER.sub(lambda match: num2words(int(match.group(0)), lang=words_language), text)


def _amount_words(amount_text: str, language: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", amount_text.replace(",", ".")))
    words = num2words(amount, to="currency", currency=currency, lang="cz" if language == "cs" else language)
    if amount.is_integer():
        cut = words.rfind(_CURRENCY_AND[language])
        if cut != -1:
            words = words[:cut]
    return words


# Chinese: numbers read as Chinese words (upstream's zh_num2words.TextNorm with its default options).

_ZH_DIGITS = "零一二三四五六七八九"
# Place-value units, largest first, with their powers of ten ("mid" numbering: 兆 = 亿 x 万).
_ZH_UNITS = ((44, "载"), (40, "正"), (36, "涧"), (32, "沟"), (28, "穰"), (24, "秭"), (20, "垓"), (16, "京"),
             (12, "兆"), (8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))
_ZH_MONEY_UNIT = ("(?:(?:亿|千万|百万|万|千|百)|(?:亿|千万|百万|万|千|百|)元|(?:亿|千万|百万|万|千|百|)块"
                  "|角|毛|分)")
# Measure words after a number; only whether one follows matters, so the order of upstream's list does not.
_ZH_MEASURE_WORD = ("(?:[匹张座回场尾条个首阙阵网炮顶丘棵只支袭辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭"
                    "江溪钟队单双对出口头脚板跳枝件贴针线管名位身堂课本页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻常"
                    "铺程撮勺合升斗盘碗碟叠桶笼盆盒杯斛锅簋篮罐瓶壶卮盏箩箱煲啖袋钵年月日季刻时周天秒旬纪岁世更夜"
                    "春夏秋冬代伏辈丸泡粒幢堆根道面片块]|[千毫微]克|[千分厘毫微]米)")
_ZH_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
# Upstream's \D+ before an amount: only the group is used, and one non-digit finds the same groups
# without scanning a long run of them again from each of its characters.
_ZH_MONEY = re.compile(rf"\D((\d+(\.\d+)?)[多余几]?{_ZH_MONEY_UNIT}(\d{_ZH_MONEY_UNIT}?)?)")
_ZH_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_ZH_LANDLINE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_ZH_FRACTION = re.compile(r"(?<!\d)(\d+/\d+)")
_ZH_PERCENT = re.compile(r"(?<!\d)(\d+(\.\d+)?%)")
_ZH_MEASURED = re.compile(rf"(?<!\d)(\d+(\.\d+)?)[多余几]?{_ZH_MEASURE_WORD}")
_ZH_DIGIT_STRING = re.compile(r"(\d{4,32})")
_ZH_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_ZH_LATIN_TWO_LATIN = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")  # P2P, B2B: put the 2 back
_ZH_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗"
                   "〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-" + string.punctuation)
_ZH_PUNCTUATION_TO_COMMA = str.maketrans(_ZH_PUNCTUATION, "," * len(_ZH_PUNCTUATION))


def chinese_numbers_to_words(text: str) -> str:
    """Dates, amounts, phone numbers, fractions, percentages and numbers as Chinese words; punctuation to ','."""
    text = f"^{text}$"  # so that patterns needing a non-digit around a number also match at the ends
    # Each step rewrites the first occurrence of every matched string, in match order (upstream's way).
    text = _replace_each(_ZH_DATE, text, _zh_date)
    text = _replace_each(_ZH_MONEY, text, _zh_money)
    text = _replace_each(_ZH_MOBILE, text, lambda phone: "".join(map(_zh_digits, phone.strip("+").split())))
    text = _replace_each(_ZH_LANDLINE, text, lambda phone: "".join(map(_zh_digits, phone.split("-"))))
    text = _replace_each(_ZH_FRACTION, text, _zh_fraction)
    text = text.replace("％", "%")
    text = _replace_each(_ZH_PERCENT, text, lambda percent: "百分之" + _zh_cardinal(percent.strip().strip("%")))
    text = _replace_each(_ZH_MEASURED, text, _zh_cardinal)
    text = _replace_each(_ZH_DIGIT_STRING, text, _zh_digits)
    text = _replace_each(_ZH_NUMBER, text, _zh_cardinal)
    for match in _ZH_LATIN_TWO_LATIN.finditer(text):
        text = text.replace(match.group(1), match.group(2) + "2" + match.group(3), 1)
    return text.lstrip("^").rstrip("$").translate(_ZH_PUNCTUATION_TO_COMMA)


def _replace_each(pattern: re.Pattern[str], text: str, spell: Callable[[str], str]) -> str:
    for found in [match.group(1) for match in pattern.finditer(text)]:
        text = text.replace(found, spell(found), 1)
    return text


def _zh_cardinal(number: str, *, place_values: bool = True, liang: bool = True) -> str:
    """A number string in Chinese: 105 -> 一百零五, 12 -> 十二, 2000 -> 两千, 0.5 -> 零点五."""
    integer, _, decimal = number.partition(".")
    if "." in decimal:
        raise ValueError(f"{number!r} has more than one decimal point")
    symbols: list[Any] = (_zh_place_values(integer) if place_values and len(integer) > 1
                          else [int(digit) for digit in integer])
    if decimal:
        symbols += ["点"] + [int(digit) for digit in decimal]
    if liang:
        # 2 before a unit other than 十 (and not after 十) reads 两: 两百, 两千, 两万, but 二十, 十二万.
        for index, symbol in enumerate(symbols):
            if type(symbol) is not int or symbol != 2:
                continue
            before = symbols[index - 1] if index > 0 else None
            after = symbols[index + 1] if index + 1 < len(symbols) else None
            if (isinstance(after, tuple) and after[0] != 1
                    and (before is None or (isinstance(before, tuple) and before[0] != 1))):
                symbols[index] = "两"
    spelled = "".join(_ZH_DIGITS[symbol] if type(symbol) is int else
                      symbol[1] if isinstance(symbol, tuple) else symbol for symbol in symbols)
    if spelled.startswith("点"):
        return "零" + spelled
    if spelled[:2] == "一十":
        return spelled[1:]
    return spelled


def _zh_place_values(digits: str) -> list[Any]:
    """Digits and (power, unit) pairs for an integer string, zeros read once: 1005 -> 1 千 0 5."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        return ([0] if len(significant) < len(digits) else []) + [int(significant)]
    unit = next(unit for unit in _ZH_UNITS if unit[0] < len(significant))
    return _zh_place_values(digits[:-unit[0]]) + [unit] + _zh_place_values(significant[-unit[0]:])


def _zh_digits(digits: str) -> str:
    return _zh_cardinal(digits, place_values=False, liang=False)


def _zh_fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return _zh_cardinal(denominator) + "分之" + _zh_cardinal(numerator)


def _zh_money(money: str) -> str:
    for number in [match.group(1) for match in _ZH_NUMBER.finditer(money)]:
        money = money.replace(number, _zh_cardinal(number))
    return money


def _zh_date(date: str) -> str:
    year, has_year, rest = date.strip().partition("年")
    if not has_year:
        year, rest = "", date
    else:
        year = _zh_digits(year) + "年"
    if not rest:
        return year
    month, has_month, day = rest.strip().partition("月")
    if has_month:
        month = _zh_cardinal(month) + "月"
    else:
        month, day = "", date
    if day:
        day = _zh_cardinal(day[:-1]) + day[-1]
    return year + month + day


# Transliteration, with the optional packages.

_HAN = re.compile("[\u3007\u3400-\u4dbf\u4e00-\u9fff\ue815-\ue864\uf900-\ufaff\U00020000-\U000323af]")
_HANGUL_SYLLABLE = re.compile("[\uac00-\ud7a3]")


def _missing(language: str, package: str, install: str) -> InputError:
    return InputError(f"{language} lyrics need the optional package {package}: install it with "
                      f"`pip install {install}`, or write those lines in another language")


def _pinyin(text: str) -> str:
    if not _HAN.search(text):
        return text  # pypinyin keeps everything but Han characters as it is
    try:
        import pypinyin
    except ImportError:
        raise _missing("Chinese", "pypinyin", "pypinyin") from None
    syllables = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False,
                                neutral_tone_with_five=True)
    return "".join(syllable[0] for syllable in syllables)


def _romanize_korean(text: str) -> str:
    if not _HANGUL_SYLLABLE.search(text):
        return text  # hangul-romanize keeps everything but Hangul syllables as it is
    try:
        from hangul_romanize import Transliter
        from hangul_romanize.rule import academic
    except ImportError:
        raise _missing("Korean", "hangul-romanize", "hangul-romanize") from None
    return Transliter(academic).translit(text)


@lru_cache(maxsize=1)
def _katsu() -> Any:
    try:
        import cutlet

        return cutlet.Cutlet()
    except (ImportError, RuntimeError):  # fugashi raises RuntimeError when no MeCab dictionary is installed
        raise _missing("Japanese", "cutlet", "cutlet fugashi unidic-lite") from None


def _romaji(text: str) -> str:
    return _katsu().romaji(text).lower()
