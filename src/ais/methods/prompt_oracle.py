"""The ceiling of any input-dependent plan: per prompt, the greedy layer search on its own
continuation (decode-time, as the frontier scores it). In-sample by design."""
from ais.methods import Method, MethodError, register
from ais.methods.search import greedy_removal


@register
class PromptOracle(Method):
    """The plan a search on the prompt's own reference continuation finds (needs the reference:
    `request.reference.score(plans)`); searches are kept per prompt and extended
    when a larger budget is asked."""

    name = "prompt_oracle"
    needs = frozenset({"reference"})
    deployable = False
    control = True

    def __init__(self, setup):
        super().__init__(setup)
        self._removed: dict = {}

    def plan(self, request, budget):
        if request.reference is None:
            raise MethodError("the per-prompt oracle needs the prompt's reference continuation")
        n = budget.layers
        removed = self._removed.setdefault(request.key, [])
        if len(removed) < n:
            score = lambda sets: request.reference.score([self.setup.plan_of(s, budget) for s in sets])  # noqa: E731
            steps = greedy_removal(score, self.setup.skippable(),
                                   n - len(removed), removed)
            removed += [s["layer"] for s in steps]
        return self.setup.plan_of(removed[:n], budget)
