import pytest

from ace_step_ui.errors import InputError
from ace_step_ui.hosted import example_ids, is_model_id, parse_model_id


@pytest.mark.parametrize("model_id, task, family", [
    ("acestep-ai/ace-step/text-to-audio", "generate", "ACE-Step v1"),
    ("acestep-ai/ace-step-1.5/text-to-audio", "generate", "ACE-Step 1.5"),
    ("acestep-ai/ace-step/audio-inpaint", "inpaint", "ACE-Step v1"),
    ("acestep-ai/ace-step/audio-outpaint", "outpaint", "ACE-Step v1"),
    ("fal-ai/ace-step", "generate", "ACE-Step v1"),  # fal's text-to-audio is the bare app
    ("fal-ai/ace-step/audio-to-audio", "edit", "ACE-Step v1"),
    ("fal-ai/ace-step/prompt-to-audio", "prompt_to_audio", "ACE-Step v1"),
    ("fal-ai/ace-step-1.5/audio-inpaint", "inpaint", "ACE-Step 1.5"),
    ("wavespeed-ai/ace-step/audio-inpaint", "inpaint", "ACE-Step v1"),
    ("/wavespeed-ai/ace-step-1.5/prompt-to-audio/", "prompt_to_audio", "ACE-Step 1.5"),
])
def test_hosted_ids_name_a_task_and_a_family(model_id, task, family):
    hosted = parse_model_id(model_id)
    assert (hosted.task, hosted.family) == (task, family)
    assert is_model_id(model_id.strip("/"))


@pytest.mark.parametrize("model_id", ["acestep-ai/ace-step/remix", "fal-ai/ace-step-2/text-to-audio",
                                      "someone/ace-step/audio-inpaint", "acestep-ai",
                                      "acestep-ai/ace-step/audio-inpaint/extra", ""])
def test_other_ids_are_refused_with_the_list(model_id):
    with pytest.raises(InputError, match="is not a hosted ACE-Step model id; use one of "
                                         "acestep-ai/ace-step/text-to-audio"):
        parse_model_id(model_id)


def test_the_examples_all_parse():
    assert len(example_ids()) == 10
    assert all(parse_model_id(model_id).model_id == model_id for model_id in example_ids())
    assert not is_model_id("generate") and not is_model_id("ACE-Step/ACE-Step-v1-3.5B")
