"""The 5 Hz LM planner: its prompts, reading the LM's text (recorded outputs written here in
upstream's format), the tiny random-weight planner end to end in both modes, and
`python -m ace_step_ui tiny planner`."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from ace_step_ui import cli
from ace_step_ui.errors import Cancelled, InputError, ModelUnavailableError
from ace_step_ui.v15 import planner as lm
from ace_step_ui.v15.planner import (AudioCodesOnly, Guidance, Metadata, Plan, Planner,
                                     PlannerConfig, check_metadata, codes_prompt,
                                     codes_unconditional_prompt, guided_logits, make_tiny_planner,
                                     metadata_prompt, read_metadata, reasoning_block,
                                     split_reasoning, thought_plan, write_prompt, written_plan)

SYSTEM_THINK = ("<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the "
                "given conditions:\n\n<|im_end|>\n")
SONG_TURN = "<|im_start|>user\n# Caption\nlofi\n\n# Lyric\n[verse]\nla\n<|im_end|>\n"

# What write mode returns for "a rainy-day lofi song with a soft female voice".
WRITTEN = (
    "<think>\n"
    "bpm: 84\n"
    "caption: A warm lo-fi hip hop track with dusty vinyl crackle, a mellow Rhodes piano\n"
    "  and soft boom-bap drums; a hushed female vocal drifts over the sound of rain.\n"
    "duration: 148\n"
    "genres: lo-fi hip hop, chillhop\n"
    "keyscale: Eb major\n"
    "language: en\n"
    "timesignature: 4\n"
    "</think>\n\n"
    "# Lyric\n"
    "[Verse 1]\n"
    "Raindrops tapping on the glass\n"
    "Coffee cooling, hours pass\n\n"
    "[Chorus]\n"
    "Stay a while, stay a while\n"
    "<|im_end|>")

# Think mode: phase 1's reasoning, then phase 2's codes.
THOUGHT = (
    "<think>\n"
    "bpm: 128\n"
    "caption: Driving synthwave with gated reverb drums, a pulsing bass and a bright\n"
    "  arpeggiated lead.\n"
    "duration: 30\n"
    "keyscale: A minor\n"
    "language: en\n"
    "timesignature: 4\n"
    "</think>"
    "<|audio_code_18953|><|audio_code_13833|><|audio_code_0|><|audio_code_63999|><|im_end|>")


def test_write_prompt_is_the_chatml_upstream_renders():
    assert write_prompt("a sad waltz", instrumental=True) == (
        "<|im_start|>system\n# Instruction\nExpand the user's input into a more detailed and "
        "specific musical description:\n\n<|im_end|>\n"
        "<|im_start|>user\na sad waltz\n\ninstrumental: true<|im_end|>\n"
        "<|im_start|>assistant\n")
    blank = write_prompt("  ", instrumental=False)
    assert "<|im_start|>user\nNO USER INPUT\n\ninstrumental: false<|im_end|>" in blank


def test_think_prompts_phase_one_and_phase_two():
    assert metadata_prompt("lofi", "[verse]\nla") == (
        SYSTEM_THINK + SONG_TURN + "<|im_start|>assistant\n")
    metadata = Metadata(bpm=90, duration_s=30.0, keyscale="C major", timesignature="4")
    # Phase 2 keeps the assistant turn open: the codes follow "</think>\n\n" directly.
    assert codes_prompt("lofi", "[verse]\nla", metadata) == (
        SYSTEM_THINK + SONG_TURN + "<|im_start|>assistant\n<think>\nbpm: 90\nduration: 30\n"
        "keyscale: C major\ntimesignature: 4\n</think>\n\n")
    assert codes_unconditional_prompt() == (
        SYSTEM_THINK + "<|im_start|>user\nNO USER INPUT<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n")
    assert "<|im_start|>user\nmuddy mix<|im_end|>" in codes_unconditional_prompt(" muddy mix ")


def test_reasoning_block_is_sorted_yaml_and_reads_back():
    full = Metadata(caption="calm piano", bpm=120, duration_s=30.9, keyscale="F# minor",
                    language="en", timesignature="4")
    assert reasoning_block(full) == ("<think>\nbpm: 120\ncaption: calm piano\nduration: 30\n"
                                     "keyscale: F# minor\nlanguage: en\ntimesignature: 4\n</think>")
    assert reasoning_block(Metadata()) == "<think>\n\n</think>"
    # PyYAML quotes a caption with ": " and wraps it at 80 columns; both read back.
    caption = ("Quoted: a caption with a colon, and a tail long enough to go past the eighty "
               "column limit, so that it wraps")
    block = reasoning_block(Metadata(caption=caption))
    assert "\n  " in block and "'" in block
    assert read_metadata(split_reasoning(block)[0]).caption == caption


def test_a_written_song_reads_into_a_plan():
    plan = written_plan(WRITTEN, "a rainy-day lofi song", instrumental=False)
    assert plan.tags == (
        "A warm lo-fi hip hop track with dusty vinyl crackle, a mellow Rhodes piano and soft "
        "boom-bap drums; a hushed female vocal drifts over the sound of rain.")
    assert plan.lyrics == ("[Verse 1]\nRaindrops tapping on the glass\n"
                           "Coffee cooling, hours pass\n\n[Chorus]\nStay a while, stay a while")
    assert (plan.bpm, plan.keyscale, plan.timesignature, plan.duration_s, plan.language) == (
        84, "Eb major", "4", 148.0, "en")
    assert plan.audio_codes == "" and plan.raw == WRITTEN


def test_an_instrumental_without_lyrics_gets_the_instrumental_tag():
    raw = "<think>\nbpm: 70\ncaption: Ambient drone.\nduration: 60\n</think>\n\n<|im_end|>"
    assert written_plan(raw, "drone", instrumental=True).lyrics == "[Instrumental]"
    assert written_plan(raw, "drone", instrumental=False).lyrics == ""


def test_a_thought_song_reads_into_a_plan_with_its_codes():
    plan = thought_plan(THOUGHT, "synthwave", "[verse]\nneon")
    assert plan.tags == ("Driving synthwave with gated reverb drums, a pulsing bass and a bright "
                         "arpeggiated lead.")
    assert plan.lyrics == "[verse]\nneon"
    assert (plan.bpm, plan.keyscale, plan.timesignature, plan.duration_s) == (
        128, "A minor", "4", 30.0)
    assert plan.audio_codes == ("<|audio_code_18953|><|audio_code_13833|><|audio_code_0|>"
                                "<|audio_code_63999|>")
    assert plan.codes_duration_s == pytest.approx(0.8)
    mixed = thought_plan(THOUGHT, "synthwave", "", check_metadata(bpm=100, keyscale="d minor"))
    assert (mixed.bpm, mixed.keyscale, mixed.duration_s) == (100, "D minor", 30.0)


def test_unreadable_values_are_unknown_and_the_users_text_stays():
    raw = ("<think>\nbpm: fast\ncaption:\nduration: -3\nkeyscale: H major\nlanguage: klingon\n"
           "timesignature: 5/4\n</think>")
    assert thought_plan(raw, "my tags", "my lyrics") == Plan(tags="my tags", lyrics="my lyrics",
                                                             raw=raw)
    assert read_metadata("bpm: 999\nduration: 5\nlanguage: unknown\ntimesignature: 6/8") == (
        Metadata(timesignature="6"))
    assert read_metadata("bpm: 120.4 BPM\nduration: 95 s\nkeyscale: c#  MINOR") == Metadata(
        bpm=120, duration_s=95.0, keyscale="C# minor")


def test_output_cut_short_keeps_what_it_has():
    raw = "<think>\nbpm: 90\ncaption: A slow blues shuffle with"
    plan = written_plan(raw, "blues", instrumental=False)
    assert (plan.bpm, plan.tags, plan.lyrics) == (90, "A slow blues shuffle with", "")
    # Phase 1 ran out before </think>: the codes that follow are not read as metadata.
    plan = thought_plan("<think>\nbpm: 90\nduration: 1" + "<|audio_code_5|>" * 3, "blues", "")
    assert (plan.bpm, plan.duration_s, plan.audio_codes) == (90, None, "<|audio_code_5|>" * 3)


@pytest.mark.parametrize("raw", [
    "", "no think block, just words", "</think><|audio_code_1|>",
    "<think><think>\n</think></think>", "\x00\xff\ufffd<think>\n: : :\n\t  indented\n</think>",
    "bpm: 1e9\nduration: 9" + "9" * 40, "<think>\ncaption: 'unterminated\n</think>", "<|im_end|>",
    "<think>\nBPM : 120\nkey scale: C",
])
def test_malformed_output_never_raises(raw):
    written = written_plan(raw, "idea", instrumental=False)
    thought = thought_plan(raw, "tags", "lyrics")
    assert isinstance(written.tags, str) and written.tags
    assert thought.lyrics == "lyrics" and written.raw == thought.raw == raw


def test_the_users_metadata_is_checked_before_any_work():
    assert check_metadata(bpm=120, keyscale="f# MINOR", timesignature="4/4", duration_s=30,
                          language="EN") == Metadata(bpm=120, keyscale="F# minor",
                                                     timesignature="4", duration_s=30.0,
                                                     language="en")
    assert check_metadata(timesignature=6).timesignature == "6"
    bad = [({"bpm": 10}, "bpm must be from 30 to 300, not 10"),
           ({"keyscale": "C dorian"}, "keyscale must be a note and a mode"),
           ({"timesignature": "5/4"}, "timesignature must be 2, 3, 4 or 6 beats per bar"),
           ({"duration_s": 5}, "duration must be from 10 to 600 s"),
           ({"language": "xx"}, "language must be a code the LM knows")]
    for values, message in bad:
        with pytest.raises(InputError, match=message):
            check_metadata(**values)


@pytest.mark.parametrize("values, message", [
    ({"temperature": 3}, "temperature must be from 0 to 2, not 3"),
    ({"top_p": 0}, "top_p must be above 0"), ({"top_k": -1}, "top_k must be 0"),
    ({"cfg_scale": 0.5}, "cfg_scale must be at least 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
])
def test_a_bad_planner_setting_is_an_input_error(values, message):
    with pytest.raises(InputError, match=f"planner {message}"):
        PlannerConfig(**values)


def test_guidance_reads_the_unconditional_prompt_then_each_new_token():
    fed = []

    def model(input_ids, past_key_values, use_cache):
        fed.append(input_ids.tolist())
        logits = torch.zeros(1, input_ids.shape[1], 4)
        logits[0, -1] = torch.tensor([1.0, 0.0, 0.0, 2.0])
        return SimpleNamespace(logits=logits, past_key_values="cache")

    guidance = Guidance(model, torch.tensor([[7, 8, 9]]), scale=2.0)
    conditional = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    first = guidance(torch.tensor([[1, 2]]), conditional)
    second = guidance(torch.tensor([[1, 2, 5]]), conditional)
    assert fed == [[[7, 8, 9]], [[5]]]
    assert torch.equal(first, torch.tensor([[5.0, 0.0, 2.0, 2.0]]))  # u + 2 (c - u)
    unconditional = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    assert torch.equal(second, guided_logits(conditional, unconditional, 2.0))


def test_codes_only_until_the_target_then_the_end():
    def allowed(rule, length):
        out = rule(torch.ones(1, length, dtype=torch.long), torch.zeros(1, 5))
        return torch.isfinite(out[0]).nonzero().flatten().tolist()

    rule = AudioCodesOnly(code_ids=[2, 3], end_id=0, target=2)
    assert [allowed(rule, length) for length in (10, 11, 12)] == [[2, 3], [2, 3], [0]]
    assert allowed(AudioCodesOnly(code_ids=[2, 3], end_id=0, target=None), 10) == [0, 2, 3]


@pytest.fixture(scope="module")
def tiny_planner_folder(tmp_path_factory):
    return make_tiny_planner(tmp_path_factory.mktemp("tiny-planner"))


@pytest.fixture(scope="module")
def planner(tiny_planner_folder):
    config = PlannerConfig(model=str(tiny_planner_folder), max_new_tokens=64)
    return Planner.load(config, device="cpu")


def test_the_tiny_planner_loads_like_a_real_checkpoint(tiny_planner_folder, planner):
    from transformers import AutoTokenizer

    names = {path.name for path in tiny_planner_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((tiny_planner_folder / "config.json").read_text())["model_type"] == "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(tiny_planner_folder)
    text = "<think>\nbpm: 90\n</think>\n\n<|audio_code_0|><|audio_code_63|><|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids[-3:]) == [
        "<|audio_code_0|>", "<|audio_code_63|>", "<|im_end|>"]
    assert len(planner.code_ids) == lm.TINY_AUDIO_CODES


def test_write_gives_the_same_plan_for_the_same_seed(planner):
    first = planner.write("a rainy-day lofi song", seed=11)
    again = planner.write("a rainy-day lofi song", seed=11)
    other = planner.write("a rainy-day lofi song", seed=12)
    assert first == again and first.raw
    assert other.raw != first.raw
    assert first.audio_codes == ""  # write mode never samples a code


def test_greedy_sampling_ignores_the_seed(planner):
    greedy = Planner(planner.model, planner.tokenizer, PlannerConfig(temperature=0,
                                                                     max_new_tokens=20))
    assert greedy.write("lofi", seed=1).raw == greedy.write("lofi", seed=2).raw


def test_think_makes_five_codes_a_second_for_the_duration(planner):
    first = planner.think("synthwave", "[verse]\nneon", duration_s=10, bpm=128, seed=3)
    again = planner.think("synthwave", "[verse]\nneon", duration_s=10, bpm=128, seed=3)
    other = planner.think("synthwave", "[verse]\nneon", duration_s=10, bpm=128, seed=4)
    assert first == again and other.raw != first.raw
    assert first.codes_duration_s == 10.0 and first.raw.endswith("<|im_end|>")
    assert (first.duration_s, first.bpm, first.lyrics) == (10.0, 128, "[verse]\nneon")
    codes = [int(n) for n in lm.AUDIO_CODE.findall(first.audio_codes)]
    assert all(0 <= n < lm.TINY_AUDIO_CODES for n in codes)


def test_think_with_every_value_given_goes_straight_to_the_codes(planner):
    plan = planner.think("synthwave", "", bpm=100, keyscale="A minor", timesignature=4,
                         duration_s=10, seed=1)
    assert plan.raw.startswith("<|audio_code_") and plan.codes_duration_s == 10.0
    assert (plan.bpm, plan.keyscale, plan.timesignature, plan.tags) == (
        100, "A minor", "4", "synthwave")


def test_guidance_changes_the_codes(planner):
    given = dict(bpm=100, keyscale="A minor", timesignature=4, duration_s=10, seed=5)
    unguided = Planner(planner.model, planner.tokenizer,
                       PlannerConfig(cfg_scale=1.0, max_new_tokens=64))
    guided_codes = planner.think("synthwave", "", **given).audio_codes
    assert unguided.think("synthwave", "", **given).audio_codes != guided_codes


def test_a_checkpoints_generation_config_changes_nothing(tiny_planner_folder, planner, tmp_path):
    copy = shutil.copytree(tiny_planner_folder, tmp_path / "copy")
    (copy / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.05, "top_k": 1, "top_p": 0.5,
        "repetition_penalty": 3.0}))
    other = Planner.load(PlannerConfig(model=str(copy), max_new_tokens=64), device="cpu")
    assert other.write("lofi", seed=2) == planner.write("lofi", seed=2)


def test_the_outside_random_numbers_are_left_alone(planner):
    torch.manual_seed(21)
    expected = torch.rand(3)
    torch.manual_seed(21)
    planner.write("lofi", seed=2)
    assert torch.equal(torch.rand(3), expected)


def test_progress_counts_tokens_and_ends_at_the_total(planner):
    steps = []
    plan = planner.think("synthwave", "", duration_s=10, seed=3,
                         on_step=lambda *step: steps.append(step))
    done = [step[0] for step in steps]
    assert done == sorted(done) and len(steps) >= 3
    assert all(d % lm.PROGRESS_EVERY_TOKENS == 0 and d <= total for d, total in steps[:-1])
    # Phase 1 (at most 64 tokens), then 50 codes and the end token.
    assert steps[-1][0] == steps[-1][1] and 51 < steps[-1][0] <= 64 + 51
    assert plan.codes_duration_s == 10.0
    written = []
    planner.write("lofi", seed=2, on_step=lambda *step: written.append(step))
    assert written[0] == (lm.PROGRESS_EVERY_TOKENS, 64) and written[-1][0] == written[-1][1]


@pytest.mark.parametrize("mode, stop_at", [("write", 1), ("think", 1), ("think", 6)])
def test_an_exception_from_on_step_stops_the_plan(planner, mode, stop_at):
    calls = []

    def on_step(done, total):
        calls.append(done)
        if len(calls) == stop_at:
            raise Cancelled(f"stopped after {done} tokens")

    stopped = f"stopped after {stop_at * lm.PROGRESS_EVERY_TOKENS} tokens"
    with pytest.raises(Cancelled, match=stopped):
        if mode == "write":
            planner.write("lofi", seed=1, on_step=on_step)
        else:
            planner.think("synthwave", "", duration_s=10, seed=1, on_step=on_step)
    assert len(calls) == stop_at
    assert planner.write("lofi", seed=2).raw  # the planner still works afterwards


def test_think_feeds_the_lms_reasoning_under_the_users_values_to_phase_two(planner, monkeypatch):
    planner = Planner(planner.model, planner.tokenizer)  # upstream's budgets
    prompts = []

    def scripted(prompt, budget, stop_ids, rule, progress, unconditional=None):
        prompts.append((prompt, budget, unconditional))
        if len(prompts) == 1:
            return ("<think>\nbpm: 95\ncaption: Dreamy shoegaze.\nduration: 12\nkeyscale: E major\n"
                    "language: en\ntimesignature: 3\n</think>")
        return "<|audio_code_1|>" * 60 + "<|im_end|>"

    monkeypatch.setattr(planner, "_sample", scripted)
    plan = planner.think("shoegaze", "[verse]\nhaze", bpm=120, seed=0)
    (first, first_budget, no_guidance), (second, second_budget, unconditional) = prompts
    assert first == metadata_prompt("shoegaze", "[verse]\nhaze") and no_guidance is None
    assert first_budget == 3500
    assert second == codes_prompt("shoegaze", "[verse]\nhaze", Metadata(
        bpm=120, caption="Dreamy shoegaze.", duration_s=12.0, keyscale="E major", language="en",
        timesignature="3"))
    assert second_budget == 60 + lm.CODES_MARGIN_TOKENS
    assert unconditional == codes_unconditional_prompt()
    assert (plan.tags, plan.bpm, plan.duration_s, plan.timesignature) == (
        "Dreamy shoegaze.", 120, 12.0, "3")


def test_think_checks_the_users_values_before_sampling(planner, monkeypatch):
    monkeypatch.setattr(planner, "_sample", lambda *args, **kwargs: pytest.fail("sampled"))
    with pytest.raises(InputError, match="bpm must be from 30 to 300"):
        planner.think("lofi", "", bpm=5, seed=0)


def test_an_uncached_hub_planner_is_unavailable_offline():
    with pytest.raises(ModelUnavailableError, match="ACE-Step/Ace-Step1.5"):
        lm.resolve_planner("acestep-5Hz-lm-1.7B")


def test_a_folder_without_weights_or_code_tokens_is_not_a_planner(tiny_planner_folder, tmp_path):
    partial = shutil.copytree(tiny_planner_folder, tmp_path / "partial")
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match="incomplete: missing model.safetensors"):
        lm.resolve_planner(str(partial))
    plain = SimpleNamespace(get_added_vocab=lambda: {"<|im_end|>": 1, "<think>": 2, "</think>": 3})
    with pytest.raises(ModelUnavailableError, match="Qwen/Qwen3-0.6B is not an ACE-Step 5 Hz LM: "
                                                    "its tokenizer lacks <.audio_code_N.> tokens"):
        Planner(None, plain, name="Qwen/Qwen3-0.6B")


def test_cli_tiny_planner_writes_a_planner_that_plans(tmp_path, capsys):
    assert cli.main(["tiny", "planner", str(tmp_path / "lm")]) == cli.EXIT_OK
    folder = capsys.readouterr().out.strip()
    assert folder == str(tmp_path / "lm")
    loaded = Planner.load(PlannerConfig(model=folder, max_new_tokens=20), device="cpu")
    assert loaded.write("x", seed=0).raw


def test_cli_tiny_planner_has_no_variant(tmp_path, capsys):
    args = ["tiny", "planner", str(tmp_path / "lm"), "--variant", "base"]
    assert cli.main(args) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "python -m ace_step_ui tiny: --variant applies to v15 only")
    assert not (tmp_path / "lm").exists()
