"""A control: as many layers as the budget, drawn at random from the layers a plan may use."""
import zlib

import numpy as np

from ais.methods import Method, register
from ais.routing.budget import n_layers_to_skip, random_layers


@register
class RandomPlan(Method):
    """Layers drawn uniformly past the pivot, one seeded draw per prompt (the same prompt, the same draw)."""

    name = "random"
    deployable = False
    control = True

    def plan(self, request, budget):
        setup = self.setup
        n = budget.layers if budget.layers is not None else n_layers_to_skip(setup.settings.fraction, setup.n_layers)
        rng = np.random.default_rng([setup.seed, zlib.crc32(str(request.key or request.prompt).encode())])
        return setup.plan_of(random_layers(setup.n_layers, setup.pivot, n, rng), budget)
