"""A suffix automaton over token ids, for model-free drafts (SuffixDecoding, Oliaro et al. 2024;
REST, He et al. 2023): the longest suffix of what was generated that occurs in a text, and the most
frequent continuation of it there.

The automaton of a text has one state per class of substrings with the same end positions; each
state knows its longest substring's length, its suffix link, its first end position and (once
counted) how many times its substrings occur. Built online, one token at a time, in amortised
constant time per token (Blumer et al. 1985). Several texts go in one automaton with a separator
between them that no query holds, so no match crosses from one text into the next.

Used two ways by `ais.decoding.speculative.SuffixDraft`:
  - over the request's own context (prompt and reply so far), extended as tokens are accepted: the
    longest suffix that also ends earlier is the suffix link of the last state;
  - over a datastore of earlier replies (fixed): a query's longest matching suffix is tracked one
    token at a time (`Matcher`), as matching statistics are.
"""
from __future__ import annotations


class SuffixAutomaton:
    """The suffix automaton of a sequence of token ids (and separators: any negative id)."""

    def __init__(self, tokens=()):
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first_end: list[int] = [-1]   # the first end position of the state's substrings
        self.clone: list[bool] = [False]
        self.text: list[int] = []
        self.last = 0
        self._counts: list[int] | None = None
        for token in tokens:
            self.extend(token)

    def __len__(self) -> int:
        return len(self.text)

    def _state(self, length: int, link: int, first_end: int, transitions: dict | None = None) -> int:
        self.clone.append(transitions is not None)
        self.next.append(dict(transitions) if transitions else {})
        self.link.append(link)
        self.length.append(length)
        self.first_end.append(first_end)
        return len(self.next) - 1

    def extend(self, token: int) -> None:
        """Append one token to the text."""
        self._counts = None
        position = len(self.text)
        self.text.append(token)
        current = self._state(self.length[self.last] + 1, -1, position)
        p = self.last
        while p != -1 and token not in self.next[p]:
            self.next[p][token] = current
            p = self.link[p]
        if p == -1:
            self.link[current] = 0
        else:
            q = self.next[p][token]
            if self.length[p] + 1 == self.length[q]:
                self.link[current] = q
            else:
                clone = self._state(self.length[p] + 1, self.link[q], self.first_end[q], self.next[q])
                while p != -1 and self.next[p].get(token) == q:
                    self.next[p][token] = clone
                    p = self.link[p]
                self.link[q] = self.link[current] = clone
        self.last = current

    def counts(self) -> list[int]:
        """Per state, how many times its substrings occur in the text (computed once per text): each
        position's own state counts one, and a state's occurrences flow to its suffix link."""
        if self._counts is None:
            counts = [int(not clone) for clone in self.clone]
            counts[0] = 0
            for s in sorted(range(1, len(self.next)), key=lambda s: -self.length[s]):
                if self.link[s] > 0:
                    counts[self.link[s]] += counts[s]
            self._counts = counts
        return self._counts

    def repeated_suffix(self) -> tuple[int, int]:
        """(state, length) of the text's longest suffix that also ends earlier in it ((0, 0): none)."""
        state = self.link[self.last] if self.last else 0
        return max(state, 0), self.length[max(state, 0)]

    def continuation(self, state: int, limit: int, min_probability: float = 0.0) -> list[int]:
        """Up to `limit` tokens after the substrings of `state`, each the most frequent next token
        (ties: the first to occur), stopping once the product of the empirical next-token
        probabilities (count of the longer match / count of the shorter) falls below
        `min_probability`. Separators end a continuation."""
        counts = self.counts()
        out, probability = [], 1.0
        while len(out) < limit and state > 0:
            options = [(t, s) for t, s in self.next[state].items() if t >= 0]
            if not options:
                break
            token, child = max(options, key=lambda o: (counts[o[1]], -self.first_end[o[1]]))
            total = sum(counts[s] for _, s in self.next[state].items())
            probability *= counts[child] / max(1, total)
            if probability < min_probability:
                break
            out.append(token)
            state = child
        return out


class Matcher:
    """The longest suffix of a growing query that occurs in a fixed automaton's text."""

    def __init__(self, automaton: SuffixAutomaton):
        self.automaton, self.state, self.length = automaton, 0, 0

    def feed(self, token: int) -> None:
        a = self.automaton
        while self.state and token not in a.next[self.state]:
            self.state = a.link[self.state]
            self.length = a.length[self.state]
        if token in a.next[self.state]:
            self.state = a.next[self.state][token]
            self.length += 1
        else:
            self.state, self.length = 0, 0

    def feed_all(self, tokens) -> None:
        for token in tokens:
            self.feed(token)
