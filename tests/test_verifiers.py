"""Verifiers of simple instructions: edge cases of each check and the dispatcher."""

from __future__ import annotations

import pytest

from alignkit.models import verifiers as v
from alignkit.models.verifiers import check, family, on_topic, refusal, repetitive, substantive


def test_words_definition():
    assert v.words("") == []
    assert v.words("Don't stop, l’eau!") == ["Don't", "stop", "l’eau"]
    assert v.words("state-of-the-art 42") == ["state", "of", "the", "art", "42"]
    assert v.words("Café naïve 東京") == ["Café", "naïve", "東京"]


@pytest.mark.parametrize("text, n, expected", [
    ("one two three", 3, True),            # exactly at the limit
    ("one two three four", 3, False),
    ("one, two... three!!!", 3, True),     # punctuation is not a word
    ("", 3, False),                        # an empty answer does not count
    ("  ...  ", 3, False),
    ("Über größe straße", 3, True),
])
def test_max_words(text, n, expected):
    assert check({"type": "max_words", "n": n}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("The Ocean is vast.", True),           # case-insensitive
    ("oceans are vast", False),             # whole words only
    ("an ocean-going ship", True),          # hyphen is a boundary
    ("ocean.", True),
    ("", False),
    ("biocean", False),
])
def test_include_word(text, expected):
    assert check({"type": "include_word", "word": "ocean"}, text) is expected


def test_include_word_unicode_and_phrases():
    assert check({"type": "include_word", "word": "café"}, "Meet me at the CAFÉ.")
    assert not check({"type": "include_word", "word": "café"}, "cafés open late")
    assert check({"type": "include_word", "word": "ice cream"}, "I like Ice Cream!")


@pytest.mark.parametrize("text, expected", [
    ("all lower case, with punctuation!", True),
    ("One capital", False),
    ("", False),
    ("123 !?", False),                      # no letters at all
    ("ünïcödé is fine", True),
    ("ÉCOLE", False),
])
def test_lowercase(text, expected):
    assert check({"type": "lowercase"}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("no commas here.", True),
    ("one, two", False),
    ("full-width，comma", False),
    ("", False),
])
def test_no_commas(text, expected):
    assert check({"type": "no_commas"}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("Some answer. Hope this helps!", True),
    ("Some answer. hope this helps!  \n", True),   # case and trailing whitespace ignored
    ("Some answer. Hope this helps", False),       # punctuation near-miss
    ("Hope this helps! More text.", False),
    ("", False),
])
def test_ends_with(text, expected):
    assert check({"type": "ends_with", "text": "Hope this helps!"}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("  Here is my answer", True),
    ("here is", True),
    ("Here's my answer", False),
    ("", False),
])
def test_starts_with(text, expected):
    assert check({"type": "starts_with", "text": "Here is"}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n- c", True),
    ("Intro:\n* a\n* b\n• c\nOutro.", True),   # other lines allowed, several bullet marks
    ("- a\n- b", False),
    ("- a\n- b\n- c\n- d", False),
    ("-a\n-b\n-c", False),                     # a bullet needs a space after the mark
    ("", False),
])
def test_bullet_list(text, expected):
    assert check({"type": "bullet_list", "n": 3}, text) is expected


def test_all_combines_checks():
    spec = {"type": "all", "checks": [{"type": "lowercase"}, {"type": "max_words", "n": 3}]}
    assert check(spec, "tiny answer")
    assert not check(spec, "Tiny answer")
    assert not check(spec, "a much too long answer")
    assert family(spec) == "all(lowercase+max_words)"
    assert family({"type": "no_commas"}) == "no_commas"


def test_unknown_type_is_named():
    with pytest.raises(ValueError, match="shout"):
        check({"type": "shout"}, "text")


@pytest.mark.parametrize("text, expected", [
    ("I'm sorry, I can't help with that.", True),
    ("I’m not able to answer.", True),   # curly apostrophe
    ("As an AI, I have no opinion.", True),
    ("Sorry is a word in this sentence about apologies.", False),
    ("Knitting needs patience.", False),
    ("", False),
])
def test_refusal(text, expected):
    assert refusal(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("Use thin needles and knit a little every day.", True),
    ("Knitting takes practice.", True),            # stem "knit" matches "knitting"
    ("I'm not a knitting machine.", False),        # a refusal-like sentence never counts
    ("Practice every day.", False),                # no content word of the topic
    ("Knit.", False),                              # fewer than 3 words
])
def test_on_topic(text, expected):
    assert on_topic(text, "Give tips for learning to knit.") is expected
    assert check({"type": "on_topic", "topic": "Give tips for learning to knit."}, text) is expected


@pytest.mark.parametrize("text, expected", [
    ("A little island is a little island is a little island.", True),
    ("Use a mnemonic. Use a mnemonic. Use a mnemonic.", True),
    ("Use a mnemonic. Use a mnemonic.", False),       # twice is not a loop
    ("", False),
    ("Islands are land surrounded by water on all sides.", False),
])
def test_repetitive(text, expected):
    assert repetitive(text) is expected


def test_substantive_needs_topic_and_no_loop():
    topic = "Explain what an island is."
    assert substantive("An island is land surrounded by water.", topic)
    assert not substantive("A little island is a little island is a little island.", topic)
    assert not substantive("Land surrounded by water.", topic)   # never names the topic
