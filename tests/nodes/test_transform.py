from optigraph.nodes.transform import reread, with_system_instructions


def test_reread_repeats_the_last_user_question():
    messages = [
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "Q?"},
    ]
    out = reread(messages)
    assert out[2]["content"] == "Q?\nRead the question again: Q?"
    assert out[:2] == messages[:2]
    assert messages[2]["content"] == "Q?"  # not mutated


def test_reread_keeps_non_text_parts():
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    out = reread([{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    parts = out[0]["content"]
    assert parts[:2] == [{"type": "text", "text": "What is this?"}, image]
    assert parts[2]["text"] == "\nRead the question again: What is this?"


def test_system_instructions_are_appended_or_added():
    out = with_system_instructions(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "q"}], "THINK"
    )
    assert out[0] == {"role": "system", "content": "Be kind.\n\nTHINK"}
    out = with_system_instructions([{"role": "user", "content": "q"}], "THINK")
    assert out == [{"role": "system", "content": "THINK"}, {"role": "user", "content": "q"}]
