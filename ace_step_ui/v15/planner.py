"""The 5 Hz LM of ACE-Step 1.5: a planner that writes songs and thinks them into audio codes.

ACE-Step 1.5 puts a language model in front of the DiT: a Qwen3 causal LM whose vocabulary has one
more token per audio code. diffusers wraps only the DiT, so this module runs the LM with
transformers. It has two modes:

- **write**: a free-text idea (+ an instrumental flag) becomes a caption (our `tags`), lyrics and
  the song's metadata (bpm, key, time signature, duration, vocal language);
- **think**: tags + lyrics become the metadata and then the 5 Hz audio codes `<|audio_code_N|>`
  that diffusers' `AceStepPipeline(audio_codes=...)` takes (it then covers those codes).

What upstream does (github ace-step/ACE-Step-1.5, read at f30aee4 of 2026-02-08 and at a later
revision of the same files in the code index: `acestep/llm_inference.py`,
`acestep/constrained_logits_processor.py`, `acestep/constants.py`, `acestep/inference.py`,
`acestep/model_downloader.py`, `acestep/gpu_config.py`, `acestep/api_server.py`,
`docs/en/INFERENCE.md`, `docs/en/API.md`, `README.md`; token ids cross-checked in the C++ port
ServeurpersoCom/acestep.cpp, `src/prompt.h` and `docs/prompt-pipeline.md`):

- **Checkpoints.** `ACE-Step/acestep-5Hz-lm-0.6B` and `ACE-Step/acestep-5Hz-lm-4B` are repos of
  their own; the 1.7B, upstream's default, comes from the folder `acestep-5Hz-lm-1.7B` of the main
  bundle `ACE-Step/Ace-Step1.5` (`model_downloader.py` knows no repo of its own for it). They are
  built on Qwen3-0.6B, -1.7B and -4B (README), in the transformers layout (`config.json`,
  safetensors, a fast tokenizer). Upstream budgets 3, 8 and 12 GB of GPU memory for them
  (`gpu_config.py`); the project's reference notes give 1.2, 3.4 and 8 GB of bf16 weights.
  Upstream loads them with `trust_remote_code=True`, which stock Qwen3 does not need; we never do.
- **Vocabulary.** Qwen3's 151669 tokens (`<|im_start|>` 151644, `<|im_end|>` 151645, `<think>`
  151667, `</think>` 151668), then `<|audio_code_0|>` … `<|audio_code_65534|>` at 151669 … 217203:
  65535 code tokens, of which only 0 … 63999 are ever sampled (the FSQ codebook has 64000 entries).
  The LM stops on `<|im_end|>`.
- **Prompt.** Qwen's ChatML, rendered by the tokenizer's chat template; the system turn is
  `# Instruction\\n{instruction}\\n\\n`. Write mode: instruction "Expand the user's input into a
  more detailed and specific musical description:", user turn `{idea}\\n\\ninstrumental: true` (or
  false; a blank idea becomes "NO USER INPUT"). Think mode: instruction "Generate audio semantic
  tokens based on the given conditions:", user turn `# Caption\\n{tags}\\n\\n# Lyric\\n{lyrics}\\n`.
- **Output.** A `<think>` block of YAML, keys in alphabetical order: `bpm` (30-300), `caption`
  (wrapped by PyYAML at 80 columns, continuation lines indented by two spaces), `duration` (10-600
  s), sometimes `genres`, `keyscale` (`C major`, `F# minor`; #, b, ♯ or ♭), `language` (an ISO
  code or `unknown`), `timesignature` (2, 3, 4 or 6 beats per bar). Write mode continues after
  `</think>` with the lyrics, sometimes under a `# Lyric` header; think mode with the codes.
- **Think runs in two phases.** Phase 1 writes the `<think>` block and stops at `</think>`; it is
  skipped when the user gave bpm, key, time signature and duration. Phase 2 re-renders the
  metadata with `yaml.dump(sort_keys=True)` (time signature "4/4" as 4) into an *open* assistant
  turn (`<|im_start|>assistant\\n<think>\\n…\\n</think>\\n\\n`) and samples codes, 5 per second.
  The early revision closed that turn with `<|im_end|>` first; the later one keeps it open,
  "matching the training layout", and so do we.
- **Sampling.** temperature 0.85, top-p 0.9, top-k off, repetition penalty 1.0, applied in the
  order guidance, constraints, penalty, top-k, top-p, temperature. At most 3500 new tokens (the
  4096-token context less 64, and no more than 600 s of codes plus 500); in phase 2 the target
  number of codes plus 10.
- **LM guidance, codes phase only.** logits = u + s·(c − u) with s = `lm_cfg_scale` 2.0 (the API
  server's default is 2.5); u comes from a second prompt whose user turn is the negative prompt
  ("NO USER INPUT" by default) and whose reasoning is empty (`<think>\\n\\n</think>\\n\\n`), fed the
  same sampled tokens. The later revision turned guidance off in phase 1 because it cut captions
  short; write mode never had it.
- **Constrained decoding.** An FSM logits processor forces the field names, their order and
  valid values, and injects the user's values token by token; in the codes phase it allows only
  code tokens and the end, blocks the end until duration × 5 codes exist and then forces it (the
  user's duration, else phase 1's).
- **Parsing.** The codes are every `<|audio_code_N|>` in the output; the metadata are `key: value`
  lines with indented continuation lines; the lyrics are what follows `</think>`, less a `# Lyric`
  header and the trailing `<|im_end|>`; an instrumental song without lyrics gets "[Instrumental]".
  The DiT takes the user's bpm, key, time signature and duration over the LM's, and the LM's
  caption over the user's.

What we do differently, and why:

- Prompts are rendered here as plain strings (what Qwen3's template renders for these turns), so
  the tiny test checkpoint needs no chat template and one checkpoint's template cannot change them.
- No metadata FSM (2300 lines upstream): values are checked as they are read, and a missing or
  out-of-range one becomes None (the DiT then gets none). Two cheap constraints stay: no audio
  codes in write mode or before `</think>`, and only codes, exactly duration × 5, in phase 2. The
  user's values are not injected into phase 1 but win over the LM's after it; phase 2 sees them.
- The unconditional branch runs as a second forward with its own KV cache rather than a
  left-padded batch of two, so positions need no padding bookkeeping.
- Sampling goes through `model.generate` with a neutral `GenerationConfig` (a checkpoint's
  `generation_config.json` adds nothing) and our processors in upstream's order. The seed seeds a
  forked RNG: a plan leaves everyone else's random numbers alone.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import LogitsProcessor, StoppingCriteria

from ..engines import DEFAULT_PLANNER, HUB_PLANNERS, StepCallback, pick_device, pick_dtype
from ..errors import InputError, ModelUnavailableError
from ..hub import download, local_checkpoint, require_files
from ..requests import BPM_RANGE, KEYSCALE, LANGUAGES
from ..requests import TIME_SIGNATURES as SONG_BEATS

PLANNER_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja")  # config, weights, tokenizer
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

WRITE_INSTRUCTION = ("Expand the user's input into a more detailed and specific musical "
                     "description:")
THINK_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
NO_USER_INPUT = "NO USER INPUT"  # upstream's blank idea, and its default negative prompt
INSTRUMENTAL_LYRICS = "[Instrumental]"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
AUDIO_CODE = re.compile(r"<\|audio_code_(\d+)\|>")

CODES_PER_SECOND = 5
MAX_AUDIO_CODE = 63999  # the FSQ codebook has 64000 entries; the other 1535 code tokens go unused
CODES_MARGIN_TOKENS = 10  # upstream's phase 2 budget: the target number of codes plus 10
DURATION_RANGE_S = (10, 600)
TIME_SIGNATURES = tuple(map(str, SONG_BEATS))  # as the LM writes them
PROGRESS_EVERY_TOKENS = 16

TINY_AUDIO_CODES = 64  # the tiny planner's code tokens; the real vocabulary has 65535


@dataclass(frozen=True)
class PlannerConfig:
    """Which LM to run and how to sample it; the defaults are upstream's."""

    model: str = DEFAULT_PLANNER  # a name in HUB_PLANNERS, a Hub repo id or a local folder
    max_new_tokens: int = 3500  # min(4096-token context - 64, 600 s of codes + 500)
    temperature: float = 0.85  # 0 samples greedily
    top_p: float = 0.9  # 1 turns it off
    top_k: int = 0  # 0 turns it off
    cfg_scale: float = 2.0  # the LM's guidance in the codes phase; 1 turns it off
    negative_prompt: str = NO_USER_INPUT
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        rules = (
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", 0 <= self.temperature <= 2, "from 0 to 2"),
            ("top_p", 0 < self.top_p <= 1, "above 0 and at most 1"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("cfg_scale", self.cfg_scale >= 1, "at least 1 (1 is off)"),
            ("repetition_penalty", self.repetition_penalty > 0, "above 0"),
        )
        for name, ok, rule in rules:
            if not ok:
                raise InputError(f"planner {name} must be {rule}, not {getattr(self, name)}")


@dataclass(frozen=True)
class Metadata:
    """The song's metadata as the LM writes it in its `<think>` block; None is unknown."""

    caption: str | None = None
    bpm: int | None = None
    duration_s: float | None = None
    keyscale: str | None = None
    language: str | None = None
    timesignature: str | None = None

    def over(self, other: Metadata) -> Metadata:
        """These values, and `other`'s where these are unknown."""
        merged = {}
        for field in fields(self):
            mine = getattr(self, field.name)
            merged[field.name] = getattr(other, field.name) if mine is None else mine
        return Metadata(**merged)


@dataclass(frozen=True)
class Plan:
    """What the planner decided: the DiT's inputs, and the LM's text they came from."""

    tags: str
    lyrics: str
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    duration_s: float | None = None
    language: str | None = None
    audio_codes: str = ""  # "<|audio_code_N|>…", 5 a second (think mode); "" when none came
    raw: str = ""

    @property
    def codes_duration_s(self) -> float:
        return len(AUDIO_CODE.findall(self.audio_codes)) / CODES_PER_SECOND


def chat_prompt(instruction: str, user: str, assistant: str = "") -> str:
    """Qwen's ChatML for a system and a user turn, then the assistant's turn, left open with
    `assistant` in it: what the chat template renders for upstream's messages."""
    return (f"<|im_start|>system\n# Instruction\n{instruction}\n\n<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n{assistant}")


def write_prompt(idea: str, instrumental: bool) -> str:
    idea = idea if idea.strip() else NO_USER_INPUT
    flag = "true" if instrumental else "false"
    return chat_prompt(WRITE_INSTRUCTION, f"{idea}\n\ninstrumental: {flag}")


def song_turn(tags: str, lyrics: str) -> str:
    return f"# Caption\n{tags}\n\n# Lyric\n{lyrics}\n"


def metadata_prompt(tags: str, lyrics: str) -> str:
    """Think, phase 1: the LM writes the `<think>` block."""
    return chat_prompt(THINK_INSTRUCTION, song_turn(tags, lyrics))


def reasoning_block(metadata: Metadata) -> str:
    """`metadata` as the `<think>` block the LM was trained on: PyYAML, keys sorted, whole
    numbers unquoted, the time signature as beats per bar."""
    import yaml

    values = {"bpm": metadata.bpm, "caption": metadata.caption, "keyscale": metadata.keyscale,
              "language": metadata.language}
    if metadata.duration_s is not None:
        values["duration"] = int(metadata.duration_s)
    if metadata.timesignature is not None:
        values["timesignature"] = int(metadata.timesignature)
    present = {key: value for key, value in values.items() if value is not None}
    body = yaml.safe_dump(present, allow_unicode=True, sort_keys=True).strip() if present else ""
    return f"{THINK_OPEN}\n{body}\n{THINK_CLOSE}"


def codes_prompt(tags: str, lyrics: str, metadata: Metadata) -> str:
    """Think, phase 2: the reasoning in an open assistant turn; the LM goes on with codes."""
    return chat_prompt(THINK_INSTRUCTION, song_turn(tags, lyrics),
                       reasoning_block(metadata) + "\n\n")


def codes_unconditional_prompt(negative_prompt: str = NO_USER_INPUT) -> str:
    """Phase 2's guidance branch: no song, no reasoning (the training's condition dropout)."""
    return chat_prompt(THINK_INSTRUCTION, negative_prompt.strip() or NO_USER_INPUT,
                       f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")


def split_reasoning(raw: str) -> tuple[str, str]:
    """(the text of the `<think>` block, the text after it). Output cut short before `</think>`
    is all reasoning, up to the first audio code or end token, and nothing follows it."""
    start = raw.find(THINK_OPEN)
    begin = start + len(THINK_OPEN) if start >= 0 else 0
    end = raw.find(THINK_CLOSE, begin)
    if end >= 0:
        return raw[begin:end], raw[end + len(THINK_CLOSE):]
    body = raw[begin:]
    first_code = AUDIO_CODE.search(body)
    stops = [body.find(token) for token in END_TOKENS] + [first_code.start() if first_code else -1]
    return body[:min((i for i in stops if i >= 0), default=len(body))], ""


def read_fields(reasoning: str) -> dict[str, str]:
    """The `key: value` lines of a reasoning block: keys lower-cased, indented continuation lines
    joined with a space, YAML quotes removed. Other lines are skipped."""
    found: dict[str, str] = {}
    key = None
    for line in reasoning.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if key is not None:
                found[key] = f"{found[key]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        key = name if colon and re.fullmatch(r"[a-z_]+", name) else None
        if key is not None:
            found[key] = value.strip()
    return {name: _unquote(value) for name, value in found.items()}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def _number(text: str, units: str) -> float | None:
    match = re.fullmatch(rf"(\d+(?:\.\d+)?)\s*(?:{units})?", text.strip(), re.IGNORECASE)
    return float(match.group(1)) if match else None


def as_bpm(text: str) -> int | None:
    number = _number(text, "bpm")
    low, high = BPM_RANGE
    return round(number) if number is not None and low <= number <= high else None


def as_duration_s(text: str) -> float | None:
    number = _number(text, "s|sec|seconds")
    shortest, longest = DURATION_RANGE_S
    return number if number is not None and shortest <= number <= longest else None


def as_keyscale(text: str) -> str | None:
    match = KEYSCALE.fullmatch(text.strip())
    if not match:
        return None
    note, accidental, mode = match.groups()
    return f"{note.upper()}{accidental or ''} {mode.lower()}"


def as_timesignature(text: str) -> str | None:
    match = re.fullmatch(r"(\d+)(?:\s*/\s*\d+)?", text.strip())
    return match.group(1) if match and match.group(1) in TIME_SIGNATURES else None


def as_language(text: str) -> str | None:
    code = text.strip().lower()
    return code if code in LANGUAGES else None


def read_metadata(reasoning: str) -> Metadata:
    """The metadata of a reasoning block; a missing or unreadable value is None."""
    found = read_fields(reasoning)

    def read(name: str, convert: Callable[[str], Any]) -> Any:
        return convert(found[name]) if name in found else None

    return Metadata(caption=" ".join(found.get("caption", "").split()) or None,
                    bpm=read("bpm", as_bpm), duration_s=read("duration", as_duration_s),
                    keyscale=read("keyscale", as_keyscale), language=read("language", as_language),
                    timesignature=read("timesignature", as_timesignature))


def read_lyrics(after_reasoning: str) -> str:
    text = after_reasoning
    for token in END_TOKENS:
        text = text.replace(token, "")
    text = re.sub(r"^#\s*lyrics?[ \t]*\n", "", text.strip(), flags=re.IGNORECASE)
    return text.strip()


def read_audio_codes(raw: str) -> str:
    return "".join(match.group(0) for match in AUDIO_CODE.finditer(raw))


def written_plan(raw: str, idea: str, instrumental: bool) -> Plan:
    """A plan from write mode's output. Without a caption the idea is the tags; without lyrics an
    instrumental song gets "[Instrumental]" and a sung one "" (the DiT takes both)."""
    reasoning, after = split_reasoning(raw)
    metadata = read_metadata(reasoning)
    lyrics = read_lyrics(after) or (INSTRUMENTAL_LYRICS if instrumental else "")
    return _plan(metadata, metadata.caption or idea.strip(), lyrics, "", raw)


def thought_plan(raw: str, tags: str, lyrics: str, given: Metadata = Metadata()) -> Plan:
    """A plan from think mode's output (phase 1's text, if it ran, then phase 2's). The user's
    `given` values win over the LM's, and the LM's caption over `tags` (upstream's
    use_cot_caption)."""
    reasoning, _ = split_reasoning(raw)
    metadata = given.over(read_metadata(reasoning))
    return _plan(metadata, metadata.caption or tags, lyrics, read_audio_codes(raw), raw)


def _plan(metadata: Metadata, tags: str, lyrics: str, audio_codes: str, raw: str) -> Plan:
    return Plan(tags=tags, lyrics=lyrics, bpm=metadata.bpm, keyscale=metadata.keyscale,
                timesignature=metadata.timesignature, duration_s=metadata.duration_s,
                language=metadata.language, audio_codes=audio_codes, raw=raw)


def check_metadata(bpm: int | None = None, keyscale: str | None = None,
                   timesignature: str | int | None = None, duration_s: float | None = None,
                   language: str | None = None) -> Metadata:
    """The user's metadata for think mode, checked; InputError says what to change."""

    def checked(value: Any, read: Callable[[str], Any], problem: str) -> Any:
        if value is None:
            return None
        result = read(str(value))
        if result is None:
            raise InputError(f"{problem}, not {value!r}")
        return result

    low_bpm, high_bpm = BPM_RANGE
    shortest, longest = DURATION_RANGE_S
    *beats, last_beats = TIME_SIGNATURES
    return Metadata(
        bpm=checked(bpm, as_bpm, f"bpm must be from {low_bpm} to {high_bpm}"),
        keyscale=checked(keyscale, as_keyscale,
                         "keyscale must be a note and a mode, like 'C major' or 'F# minor'"),
        timesignature=checked(timesignature, as_timesignature,
                              f"timesignature must be {', '.join(beats)} or {last_beats} beats "
                              f"per bar"),
        duration_s=checked(duration_s, as_duration_s,
                           f"duration must be from {shortest} to {longest} s for the 5 Hz LM"),
        language=checked(language, as_language,
                         f"language must be a code the LM knows ({', '.join(LANGUAGES)})"))


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Upstream's LM guidance on raw logits, in float32: u + s·(c − u)."""
    unconditional = unconditional.float()
    return unconditional + scale * (conditional.float() - unconditional)


class Guidance(LogitsProcessor):
    """Classifier-free guidance: the model also reads `unconditional_ids`, then the tokens sampled
    so far (with its own KV cache), and the logits are pushed away from that branch's."""

    def __init__(self, model, unconditional_ids: torch.Tensor, scale: float):
        self.model, self.unconditional_ids, self.scale = model, unconditional_ids, scale
        self.cache = None
        self.seen = None  # how much of input_ids the unconditional branch has read

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        feed = self.unconditional_ids if self.seen is None else input_ids[:, self.seen:]
        self.seen = input_ids.shape[1]
        with torch.no_grad():
            out = self.model(input_ids=feed, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return guided_logits(scores, out.logits[:, -1, :], self.scale)


class NoAudioCodes(LogitsProcessor):
    """Text only: write mode and the reasoning never sample a code."""

    def __init__(self, code_ids: list[int]):
        self.code_ids = torch.tensor(code_ids, dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_fill(1, self.code_ids.to(scores.device), float("-inf"))


class AudioCodesOnly(LogitsProcessor):
    """Codes and the end token only; with a `target`, exactly `target` codes, then the end."""

    def __init__(self, code_ids: list[int], end_id: int, target: int | None):
        self.code_ids, self.end_id, self.target = code_ids, end_id, target
        self.start = None
        self.blocked = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
            self.blocked = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
            self.blocked[self.code_ids] = False
            self.blocked[self.end_id] = False
        scores = scores.masked_fill(self.blocked, float("-inf"))
        if self.target is None:
            return scores
        if input_ids.shape[1] - self.start < self.target:
            scores[:, self.end_id] = float("-inf")
            return scores
        end = scores[:, self.end_id].clone()
        scores = torch.full_like(scores, float("-inf"))
        scores[:, self.end_id] = end
        return scores


class TokenProgress:
    """Tokens made across a plan's phases, reported every PROGRESS_EVERY_TOKENS to
    `on_step(done, total)`. `total` is the token budget, which shrinks once a phase ends early;
    the last report has done == total. An exception from `on_step` stops the generation and
    propagates."""

    def __init__(self, on_step: StepCallback | None, total: int):
        self.on_step, self.done, self.total = on_step, 0, total
        self.reported = (0, total)

    def advance(self) -> None:
        self.done += 1
        if self.done % PROGRESS_EVERY_TOKENS == 0:
            self.report(self.done, max(self.total, self.done))

    def finish(self) -> None:
        self.total = self.done
        if self.reported != (self.done, self.total):
            self.report(self.done, self.total)

    def report(self, done: int, total: int) -> None:
        self.reported = (done, total)
        if self.on_step is not None:
            self.on_step(done, total)


class ReportTokens(StoppingCriteria):
    """Counts each new token into a TokenProgress; stops nothing itself."""

    def __init__(self, progress: TokenProgress):
        self.progress = progress

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.progress.advance()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNG seeded with `seed` inside, and as it was outside (generate samples from it)."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_planner(model: str) -> Path:
    """The checkpoint folder of `model` (see PlannerConfig.model), downloaded when needed."""
    folder = local_checkpoint(model)
    if folder is None:
        repo_id, subfolder = HUB_PLANNERS.get(model, (model, None))
        patterns = [f"{subfolder}/{p}" if subfolder else p for p in PLANNER_FILES]
        folder = download(repo_id, allow_patterns=patterns)
        folder = folder / subfolder if subfolder else folder
    require_files(folder, ["config.json", "tokenizer_config.json"], model)
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise ModelUnavailableError(f"the checkpoint for {model} at {folder} is incomplete: "
                                    f"missing {WEIGHTS[0]}")
    return folder


class Planner:
    """A loaded 5 Hz LM. `write` and `think` take a seed (the same seed gives the same plan) and
    an optional `on_step(done, total)` that gets token progress and may raise to stop."""

    def __init__(self, model, tokenizer, config: PlannerConfig = PlannerConfig(),
                 name: str = ""):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        added = tokenizer.get_added_vocab()
        codes = {int(m.group(1)): token_id for token, token_id in added.items()
                 if (m := AUDIO_CODE.fullmatch(token))}
        missing = [token for token in (THINK_OPEN, THINK_CLOSE, END_TOKENS[0])
                   if token not in added]
        if not codes or missing:
            raise ModelUnavailableError(
                f"{name or 'this checkpoint'} is not an ACE-Step 5 Hz LM: its tokenizer lacks "
                f"{', '.join(missing) or '<|audio_code_N|> tokens'}")
        self.all_code_ids = sorted(codes.values())
        self.code_ids = sorted(token_id for code, token_id in codes.items()
                               if code <= MAX_AUDIO_CODE)
        self.end_ids = [added[token] for token in END_TOKENS if token in added]
        self.think_close_id = added[THINK_CLOSE]

    @classmethod
    def load(cls, config: PlannerConfig = PlannerConfig(), device: str = "auto",
             dtype: str = "auto") -> Planner:
        """Load `config.model`: bfloat16 on CUDA, float32 elsewhere, like upstream."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_device = pick_device(device)
        folder = resolve_planner(config.model)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype, torch_device))
        return cls(model.to(torch_device).eval(), tokenizer, config, config.model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: torch.device) -> None:
        """Move the LM (the planner offloads to the CPU while the DiT needs the room)."""
        self.model.to(device)

    def weights_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size()
                   for tensor in [*self.model.parameters(), *self.model.buffers()])

    def write(self, idea: str, *, instrumental: bool = False, seed: int,
              on_step: StepCallback | None = None) -> Plan:
        """Write mode: a song (caption, lyrics, metadata) from a free-text idea."""
        budget = self.config.max_new_tokens
        progress = TokenProgress(on_step, budget)
        with seeded(seed, self.device):
            raw = self._sample(write_prompt(idea, instrumental), budget, self.end_ids,
                               NoAudioCodes(self.all_code_ids), progress)
        progress.finish()
        return written_plan(raw, idea, instrumental)

    def think(self, tags: str, lyrics: str, *, bpm: int | None = None,
              keyscale: str | None = None, timesignature: str | int | None = None,
              duration_s: float | None = None, language: str | None = None, seed: int,
              on_step: StepCallback | None = None) -> Plan:
        """Think mode: the metadata the user left out, then the audio codes."""
        # 1. check the user's metadata before any work
        given = check_metadata(bpm, keyscale, timesignature, duration_s, language)
        needs_reasoning = None in (given.bpm, given.keyscale, given.timesignature, given.duration_s)
        reasoning_budget = self.config.max_new_tokens if needs_reasoning else 0
        progress = TokenProgress(on_step, reasoning_budget + self._codes_budget(given.duration_s))
        with seeded(seed, self.device):
            # 2. phase 1: the LM's reasoning, unless the user gave all it decides
            reasoning = ""
            if needs_reasoning:
                reasoning = self._sample(metadata_prompt(tags, lyrics), reasoning_budget,
                                         [self.think_close_id, *self.end_ids],
                                         NoAudioCodes(self.all_code_ids), progress)
            metadata = given.over(read_metadata(split_reasoning(reasoning)[0]))
            # 3. phase 2: the codes, exactly duration × 5 of them when a duration is known
            target = None
            if metadata.duration_s is not None:
                target = round(metadata.duration_s * CODES_PER_SECOND)
            codes_budget = self._codes_budget(metadata.duration_s)
            progress.total = progress.done + codes_budget
            unconditional = None
            if self.config.cfg_scale > 1:
                unconditional = codes_unconditional_prompt(self.config.negative_prompt)
            rule = AudioCodesOnly(self.code_ids, self.end_ids[0], target)
            codes = self._sample(codes_prompt(tags, lyrics, metadata), codes_budget,
                                 self.end_ids[:1], rule, progress, unconditional)
        progress.finish()
        # 4. the plan: the LM's text read back, the user's values first
        return thought_plan(reasoning + codes, tags, lyrics, given)

    def _codes_budget(self, duration_s: float | None) -> int:
        if duration_s is None:
            return self.config.max_new_tokens
        codes = round(duration_s * CODES_PER_SECOND)
        return min(self.config.max_new_tokens, codes + CODES_MARGIN_TOKENS)

    def _encode(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def _sample(self, prompt: str, budget: int, stop_ids: list[int], rule: LogitsProcessor,
                progress: TokenProgress, unconditional: str | None = None) -> str:
        """The LM's continuation of `prompt`: at most `budget` tokens, ending at a stop token."""
        from transformers import (GenerationConfig, LogitsProcessorList,
                                  RepetitionPenaltyLogitsProcessor, StoppingCriteriaList,
                                  TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

        config = self.config
        processors = LogitsProcessorList()
        if unconditional is not None:
            processors.append(Guidance(self.model, self._encode(unconditional), config.cfg_scale))
        processors.append(rule)
        if config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        greedy = config.temperature == 0
        if not greedy:
            if config.top_k > 0:
                processors.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1:
                processors.append(TopPLogitsWarper(config.top_p))
            processors.append(TemperatureLogitsWarper(config.temperature))
        # Every knob set and neutral: nothing from the checkpoint's generation_config.json applies.
        generation = GenerationConfig(
            max_new_tokens=budget, do_sample=not greedy, temperature=1.0, top_k=0, top_p=1.0,
            repetition_penalty=1.0, eos_token_id=stop_ids, pad_token_id=self.end_ids[-1])
        ids = self._encode(prompt)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  generation_config=generation, logits_processor=processors,
                                  stopping_criteria=StoppingCriteriaList([ReportTokens(progress)]))
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


def tiny_tokenizer():
    """A byte-level tokenizer (the 256 byte symbols and no merges: any text, nothing downloaded)
    with the real one's special tokens and TINY_AUDIO_CODES code tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # As in Qwen3: the chat markers are special, <think> and </think> ordinary added tokens.
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    codes = [f"<|audio_code_{n}|>" for n in range(TINY_AUDIO_CODES)]
    backend.add_tokens([AddedToken(token, special=False, normalized=False)
                        for token in (THINK_OPEN, THINK_CLOSE, *codes)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def make_tiny_planner(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight 5 Hz LM to `folder` (created) in the real checkpoints' layout
    (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) and return it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=8192, tie_word_embeddings=True,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
