"""`instruction` environment against INSTRUCTION_TYPES.md: a pass and a fail per type, plus the
edge cases the definitions spell out. Expected values worked out by hand from the table."""

from __future__ import annotations

import pytest

from nemo_rlvr.envs.registry import get_env
from nemo_rlvr.envs.instruction import CHECKS, count_bullets, count_paragraphs


@pytest.fixture(scope="module")
def env():
    return get_env("instruction")


def holds(env, response: str, **inst) -> bool:
    s = env.score_record(response, {"instructions": [inst]})
    assert s.error is None, s.error
    return s.reward == 1.0


def include(*keywords: str) -> dict:
    return {"type": "include_keywords", "keywords": list(keywords)}


# (response, instruction, satisfied?)
CASES = {
    # word = maximal run of non-whitespace: "mood," and "long-term" are one word each.
    "min_words_pass": ("a long-term  mood,\nok", {"type": "min_words", "n": 4}, True),   # 4 words
    "min_words_fail": ("a long-term mood,", {"type": "min_words", "n": 4}, False),       # 3 words
    "max_words_pass": ("one two three", {"type": "max_words", "n": 3}, True),
    "max_words_fail": ("one two three four", {"type": "max_words", "n": 3}, False),
    "max_words_empty": ("   ", {"type": "max_words", "n": 0}, True),                     # 0 words
    "no_commas_pass": ("No commas here; only semicolons，and a fullwidth one.", {"type": "no_commas"}, True),
    "no_commas_fail": ("One, two.", {"type": "no_commas"}, False),
    "all_lowercase_pass": ("all lower 123 ü!", {"type": "all_lowercase"}, True),
    "all_lowercase_fail": ("all lower but One", {"type": "all_lowercase"}, False),
    "all_uppercase_pass": ("ALL UPPER 123!", {"type": "all_uppercase"}, True),
    "all_uppercase_fail": ("ALL UPPEr", {"type": "all_uppercase"}, False),
    # whole-word match: case-insensitive, (?<!\w) ... (?!\w).
    "include_keywords_pass": ("Encryption keeps the cat safe.", {"type": "include_keywords",
                                                                  "keywords": ["encryption", "CAT"]}, True),
    "include_keywords_inside_word": ("A category of things.", include("cat"), False),
    "include_keywords_one_missing": ("the cat", include("cat", "dog"), False),
    "include_keywords_phrase": ("Use long-term storage.", include("long-term"), True),
    "include_keywords_punctuation_ok": ("I like cats, dogs.", include("dogs"), True),
    "include_keywords_empty_list": ("anything", {"type": "include_keywords", "keywords": []}, True),
    "forbidden_words_pass": ("Goodness me.", {"type": "forbidden_words", "words": ["good"]}, True),
    "forbidden_words_fail": ("It is GOOD.", {"type": "forbidden_words", "words": ["bad", "good"]}, False),
    "forbidden_words_underscore_is_word_char": ("good_stuff", {"type": "forbidden_words", "words": ["good"]},
                                                True),
    "kw_freq_at_least_pass": ("Cat cat CAT category", {"type": "keyword_frequency", "keyword": "cat",
                                                        "relation": "at_least", "n": 3}, True),   # 3 matches
    "kw_freq_at_least_fail": ("cat category", {"type": "keyword_frequency", "keyword": "cat",
                                               "relation": "at_least", "n": 2}, False),          # 1 match
    "kw_freq_at_most_pass": ("cat cat", {"type": "keyword_frequency", "keyword": "cat",
                                         "relation": "at_most", "n": 2}, True),
    "kw_freq_at_most_fail": ("cat cat cat", {"type": "keyword_frequency", "keyword": "cat",
                                             "relation": "at_most", "n": 2}, False),
    "kw_freq_exactly_pass": ("the dog, the Dog.", {"type": "keyword_frequency", "keyword": "dog",
                                                   "relation": "exactly", "n": 2}, True),
    "kw_freq_exactly_fail": ("dog dogs doggy", {"type": "keyword_frequency", "keyword": "dog",
                                                "relation": "exactly", "n": 2}, False),           # 1 match
    # "ha ha ha" holds "ha ha" once without overlap (the rest is " ha").
    "kw_freq_non_overlapping": ("ha ha ha", {"type": "keyword_frequency", "keyword": "ha ha",
                                             "relation": "exactly", "n": 1}, True),
    # json_format: S = R.strip(); a fence must be exactly one block, first line ``` or ```json.
    "json_plain_object": ('  {"a": [1, 2]}\n', {"type": "json_format"}, True),
    "json_any_value": ("42", {"type": "json_format"}, True),
    "json_fenced": ('```json\n{"a": 1}\n```', {"type": "json_format"}, True),
    "json_fenced_tag_case": ('```JSON\n{"a": 1}\n```', {"type": "json_format"}, True),
    "json_fenced_bare": ('```\n[1, 2]\n```', {"type": "json_format"}, True),
    "json_invalid": ("{'a': 1}", {"type": "json_format"}, False),
    "json_text_before": ('Here: {"a": 1}', {"type": "json_format"}, False),
    "json_text_after_fence": ('```json\n{"a": 1}\n```\nDone.', {"type": "json_format"}, False),
    "json_two_fences": ('```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```', {"type": "json_format"}, False),
    "json_wrong_fence_tag": ('```python\n{"a": 1}\n```', {"type": "json_format"}, False),
    "json_unclosed_fence": ('```json\n{"a": 1}', {"type": "json_format"}, False),
    "json_fence_one_line": ('```{"a": 1}```', {"type": "json_format"}, False),
    "json_empty": ("", {"type": "json_format"}, False),
    # num_bullets: lines matching ^\s*[*-]\s+\S; "---" and "**bold**" are not bullets.
    "bullets_pass": ("Intro\n* one\n  - two\n---\n**bold** line\n-three\n- \n",
                     {"type": "num_bullets", "n": 2}, True),
    "bullets_fail": ("* one\n* two\n* three", {"type": "num_bullets", "n": 2}, False),
    "bullets_dash_then_newline_not_bullet": ("-\nword\n*\tx", {"type": "num_bullets", "n": 1}, True),
    "bullets_numbers_not_bullets": ("1. a\n2. b\n+ c", {"type": "num_bullets", "n": 0}, True),
    "starts_with_pass": ("  \nDear team, hi", {"type": "starts_with", "phrase": "Dear team"}, True),
    "starts_with_case_sensitive": ("dear team", {"type": "starts_with", "phrase": "Dear"}, False),
    "ends_with_pass": ("Thanks. Any questions?  \n", {"type": "ends_with", "phrase": "Any questions?"}, True),
    "ends_with_trailing_text": ("Any questions? Bye", {"type": "ends_with", "phrase": "Any questions?"},
                                False),
    "ends_with_case_sensitive": ("any questions?", {"type": "ends_with", "phrase": "Any questions?"}, False),
    # num_paragraphs: split R.strip() on \n\s*\n, count non-empty pieces.
    "paragraphs_pass": ("\n\nOne\nstill one\n\n  \t\n\nTwo\n \nThree\n\n", {"type": "num_paragraphs", "n": 3},
                        True),
    "paragraphs_fail": ("One\nTwo\nThree", {"type": "num_paragraphs", "n": 3}, False),      # 1 paragraph
    "paragraphs_empty": ("  \n ", {"type": "num_paragraphs", "n": 0}, True),
    "quotes_pass": ('  "Hello, world."\n', {"type": "wrapped_in_quotes"}, True),
    "quotes_single_char": ('"', {"type": "wrapped_in_quotes"}, False),
    "quotes_curly": ("“Hello”", {"type": "wrapped_in_quotes"}, False),
    "quotes_only_start": ('"Hello', {"type": "wrapped_in_quotes"}, False),
    "title_pass": ("<<My Title>>\nbody", {"type": "has_title"}, True),
    "title_fail_single_brackets": ("<My Title>", {"type": "has_title"}, False),
    "title_fail_empty": ("<<>>", {"type": "has_title"}, False),
    "title_fail_newline_inside": ("<<My\nTitle>>", {"type": "has_title"}, False),
}


@pytest.mark.parametrize("response,inst,expected", CASES.values(), ids=CASES.keys())
def test_each_instruction_type(env, response, inst, expected):
    assert holds(env, response, **inst) is expected


def test_every_type_in_the_doc_is_covered():
    covered = {inst["type"] for _, inst, _ in CASES.values()}
    assert covered == set(CHECKS)
    for kind in CHECKS:  # each type has both a pass and a fail case above
        outcomes = {exp for _, inst, exp in CASES.values() if inst["type"] == kind}
        assert outcomes == {True, False}, kind


def test_strict_reward_and_fraction(env):
    insts = [{"type": "no_commas"}, {"type": "min_words", "n": 3}, {"type": "all_lowercase"},
             {"type": "min_words", "n": 100}]
    s = env.score_record("three words here", {"instructions": insts})
    # 3 of 4 hold -> reward 0 (strict), fraction .75; the second min_words gets its own key.
    assert s.reward == 0.0 and s.error is None
    assert s.components == {"fraction": 0.75, "no_commas": 1.0, "min_words": 1.0, "all_lowercase": 1.0,
                            "min_words#2": 0.0}
    s = env.score_record("three words here", {"instructions": insts[:3]})
    assert s.reward == 1.0 and s.components["fraction"] == 1.0


def test_empty_list_is_vacuously_satisfied(env):
    s = env.score_record("Anything, AT ALL", {"instructions": []})
    assert s.reward == 1.0 and s.error is None


@pytest.mark.parametrize(
    "insts,needle",
    [
        ([{"type": "min_word", "n": 3}], "min_word"),                                 # unknown type
        ([{"type": "min_words"}], "'n'"),                                             # missing parameter
        ([{"type": "min_words", "n": "3"}], "'n'"),                                   # string for int
        ([{"type": "min_words", "n": 3.0}], "'n'"),                                   # float for int
        ([{"type": "min_words", "n": True}], "'n'"),                                  # bool for int
        ([{"type": "include_keywords", "keywords": "cat"}], "'keywords'"),            # str for list
        ([{"type": "include_keywords", "keywords": ["cat", 1]}], "'keywords'"),       # non-str item
        ([{"type": "forbidden_words"}], "'words'"),
        ([{"type": "keyword_frequency", "keyword": "a", "relation": "more", "n": 1}], "'relation'"),
        ([{"type": "keyword_frequency", "keyword": ["a"], "relation": "exactly", "n": 1}], "'keyword'"),
        ([{"type": "starts_with", "phrase": None}], "'phrase'"),
        ([{"type": "no_commas"}, {"n": 3}], "instructions[1]"),                       # no type
        ([{"type": ["no_commas"]}], "instructions[0]"),
        (["no_commas"], "instructions[0]"),
        ({"type": "no_commas"}, "'instructions'"),
    ],
)
def test_bad_instructions_score_zero_with_error(env, insts, needle):
    s = env.score_record("text", {"instructions": insts})
    assert s.reward == 0.0 and s.error is not None and needle in s.error


def test_missing_field_is_an_error(env):
    s = env.score_record("text", {})
    assert s.reward == 0.0 and "'instructions'" in s.error


def test_one_bad_instruction_fails_the_case_even_if_others_hold(env):
    s = env.score_record("ok", {"instructions": [{"type": "no_commas"}, {"type": "bogus"}]})
    assert s.reward == 0.0 and "bogus" in s.error


def test_helpers():
    assert count_bullets("- a\n---\n**b**\n  * c") == 2
    assert count_paragraphs("a\n\nb\n \n\nc") == 3
