"""The ceiling of any input-dependent plan: per prompt, the greedy layer search on its own
continuation (decode-time, as the frontier scores it), in-sample (`prompt_oracle`) and out of sample
(`prompt_oracle_oos`: searched on the first half of the positions, scored on the second)."""
from ais.methods import Method, MethodError, register
from ais.methods.search import greedy_removal, greedy_removals


@register
class PromptOracle(Method):
    """The plan a search on the prompt's own reference continuation finds (needs the reference:
    `request.reference.score(plans)`); searches are kept per prompt and extended
    when a larger budget is asked."""

    name = "prompt_oracle"
    needs = frozenset({"reference"})
    deployable = False
    control = True
    subset = True  # dear: the frontier searches the first prompts of each category only

    def __init__(self, setup):
        super().__init__(setup)
        self._removed: dict = {}

    def plan(self, request, budget):
        if request.reference is None:
            raise MethodError("the per-prompt oracle needs the prompt's reference continuation")
        n = budget.layers
        removed = self._removed.setdefault(request.key, [])
        reference = self.searched_on(request.reference)
        if len(removed) < n:
            score = lambda sets: reference.score([self.setup.plan_of(s, budget) for s in sets])  # noqa: E731
            steps = greedy_removal(score, self.setup.skippable(),
                                   n - len(removed), removed)
            removed += [s["layer"] for s in steps]
        return self.setup.plan_of(removed[:n], budget)

    def plans(self, requests, budget):
        """Every request's plan, the searches of requests that share one reference advancing together
        (one scoring pass a step for all of them)."""
        n = budget.layers
        short = [r for r in requests if len(self._removed.get(r.key, [])) < n]
        joint = short[0].reference.join([r.reference for r in short]) if len(short) > 1 and all(
            r.reference is not None for r in short) else None
        if joint is not None:
            reference = self.searched_on(joint)
            removed = [self._removed.setdefault(r.key, []) for r in short]

            def score(sets_per_row):
                return reference.score_rows([[self.setup.plan_of(s, budget) for s in sets] for sets in sets_per_row])

            for found, kept in zip(greedy_removals(score, self.setup.skippable(), n - min(map(len, removed)), removed),
                                   removed):
                kept += [s["layer"] for s in found][:max(0, n - len(kept))]
        return [self.plan(r, budget) for r in requests]

    def removal_order(self, request) -> list[int]:
        """The layers the request's search removed so far, in the order it removed them (the plan at
        any budget up to their number is their first n)."""
        return list(self._removed.get(request.key, []))

    def searched_on(self, reference):
        """What the search scores plans on: the prompt's whole reference continuation (in-sample)."""
        return reference


@register
class OutOfSampleOracle(PromptOracle):
    """The same search on the first half of the continuation's positions only; the frontier scores
    it, and every method beside it, on the second half (`top1_late`): an out-of-sample ceiling, whose
    gap to the in-sample oracle on the same positions is the part of the in-sample gain that is fitting."""

    name = "prompt_oracle_oos"

    def searched_on(self, reference):
        return reference.restricted("early")
