"""The suffix automaton against brute force on random and hand-made token sequences."""
import random

from ais.decoding.suffix import Matcher, SuffixAutomaton


def occurrences(text, pattern):
    return sum(text[i:i + len(pattern)] == pattern for i in range(len(text) - len(pattern) + 1))


def test_every_substring_is_counted_as_often_as_it_occurs():
    rng = random.Random(0)
    for _ in range(20):
        text = [rng.randrange(3) for _ in range(rng.randrange(1, 40))]
        a = SuffixAutomaton(text)
        counts = a.counts()
        for i in range(len(text)):
            for j in range(i + 1, min(len(text), i + 6) + 1):
                state = 0
                for t in text[i:j]:
                    state = a.next[state][t]
                assert counts[state] == occurrences(text, text[i:j])
                assert text[a.first_end[state] - (j - i) + 1:a.first_end[state] + 1] == text[i:j]


def test_the_longest_repeated_suffix_is_found_and_ends_earlier():
    rng = random.Random(1)
    for _ in range(50):
        text = [rng.randrange(4) for _ in range(rng.randrange(1, 50))]
        a = SuffixAutomaton(text)
        state, length = a.repeated_suffix()
        best = max((n for n in range(len(text)) if occurrences(text, text[len(text) - n:]) >= 2), default=0)
        assert length == best
        if length:
            assert a.first_end[state] < len(text) - 1


def test_a_query_tracks_its_longest_suffix_in_the_text_and_never_crosses_a_separator():
    a = SuffixAutomaton([5, 6, 7, 8, -1, 7, 9])
    m = Matcher(a)
    m.feed_all([1, 5, 6])
    assert m.length == 2 and a.continuation(m.state, 3) == [7, 8]  # stops at the separator
    m.feed_all([7, 9])
    assert m.length == 2  # "7 9" occurs in the second text only; "6 7 9" nowhere
    rng = random.Random(2)
    for _ in range(30):
        text = [rng.randrange(3) for _ in range(30)]
        query = [rng.randrange(3) for _ in range(20)]
        m = Matcher(SuffixAutomaton(text))
        for k, t in enumerate(query, start=1):
            m.feed(t)
            best = max(n for n in range(k + 1) if n == 0 or occurrences(text, query[k - n:k]) > 0)
            assert m.length == best


def test_the_continuation_follows_the_most_frequent_next_token_until_it_is_unlikely():
    a = SuffixAutomaton([1, 2, 3, -1, 1, 2, 3, -2, 1, 2, 4, -3])
    m = Matcher(a)
    m.feed_all([1, 2])
    assert a.continuation(m.state, 5) == [3]                   # 3 follows twice, 4 once; then separators
    assert a.continuation(m.state, 5, min_probability=0.9) == []  # 2/3 < 0.9
    assert SuffixAutomaton([]).continuation(0, 4) == [] and SuffixAutomaton([7]).repeated_suffix() == (0, 0)
