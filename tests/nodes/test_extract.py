import pytest

from optigraph.core.answers import (
    extract_answer,
    extract_normalized,
    normalize_answer,
    strip_think,
    tag_content,
)


@pytest.mark.parametrize(
    ("text", "answer", "method"),
    [
        (r"So we get $\boxed{\frac{1}{2}}$ in the end.", r"\frac{1}{2}", "boxed"),
        (r"First \boxed{3}, then corrected: \boxed{4}", "4", "boxed"),
        ("Work...\nFinal answer: 42", "42", "final_answer"),
        ("**Final Answer**: 17.", "17", "final_answer"),
        ("Final answer:\n  Paris", "Paris", "final_answer"),
        ("Adding them, the answer is 12. Because 5 + 7 = 12.", "12", "answer_is"),
        ("The correct answer is (C).", "(C)", "answer_is"),
        ("Compute...\n#### 1,234", "1,234", "hashes"),
        ("(B)", "B", "choice"),
        ("d.", "d", "choice"),
        ("5 apples plus 7 apples make 12 apples", "12", "last_number"),
        ("It costs 3.5 dollars", "3.5", "last_number"),
    ],
)
def test_extract_answer(text, answer, method):
    found = extract_answer(text)
    assert found is not None
    assert (found.answer, found.method) == (answer, method)


def test_no_answer_in_prose():
    assert extract_answer("Roses are red, violets are blue.") is None
    assert extract_answer("") is None
    assert extract_normalized("just words") is None


def test_think_blocks_are_ignored():
    text = "<think>maybe the answer is 7</think>The answer is 8."
    assert extract_normalized(text) == "8"
    assert strip_think("scratch 7</think>final 9") == "final 9"
    assert extract_normalized("<think>only thoughts 5</think>") is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("1,000", "1000"),
        ("1000.0", "1000"),
        ("$1,000", "1000"),
        ("0.50", "0.5"),
        ("-3", "-3"),
        ("50%", "50"),
        ("**42**", "42"),
        (r"\text{Paris}", "paris"),
        ("(b)", "b"),
        ("Paris.", "paris"),
        ("  New   York ", "new york"),
        (r"12 \]", "12"),  # a display-math delimiter left after the number
        (r"\[ Final answer: 930 \]", "930"),  # the label repeated inside display math
        (r"\( 42 \)", "42"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_same_number_written_differently_normalizes_equal():
    texts = ["The answer is 1,000.", r"\boxed{1000.0}", "Final answer: $1000", "So we have 1000"]
    texts += [
        "Therefore, the final answer is:\n\\[ Final answer: 1000 \\]",
        "left over is:\n\\[ Final answer: 1000 \\]",
    ]
    assert {extract_normalized(t) for t in texts} == {"1000"}


def test_tag_content():
    assert tag_content("<thinking>x</thinking><output> yes </output>", "output") == "yes"
    assert tag_content("<output>unclosed to the end", "output") == "unclosed to the end"
    assert tag_content("I will use <output> tags.\n<output>real</output>", "output") == "real"
    assert tag_content("no tags", "output") is None


def test_a_repeated_answer_label_is_not_part_of_the_answer() -> None:
    from optigraph.core.answers import extract_answer

    assert extract_answer("so the final answer is: Final answer: 223").answer == "223"
    assert extract_answer("The final answer is **Answer: 7**").answer.strip("*") == "7"
    assert extract_answer("Final answer: answer sheets are 12").answer == "answer sheets are 12"
