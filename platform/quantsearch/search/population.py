"""The first population: every uniform config that meets the budget, the cheapest config, then random genomes
drawn with a bias toward low bits so that most of them meet the budget."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantsearch.space.genome import Genome, IntArray

# random draws tried per member before the population is filled with the least-violating infeasible ones
TRIES_PER_MEMBER = 20


def random_genome(genome: Genome, rng: np.random.Generator, biased: bool) -> IntArray:
    """One random genome; biased draws cap each individual's bits at a random level first (low bits likelier)."""
    xu = genome.xu
    if not biased:
        return rng.integers(0, xu + 1).astype(np.int64)
    cap_w, cap_a = rng.integers(0, len(genome.w_bits)), rng.integers(0, len(genome.a_bits))
    caps = np.array([xu[0], *[cap_w, cap_a] * len(genome.free)], dtype=np.int64)
    return rng.integers(0, caps + 1).astype(np.int64)


def initial_population(genome: Genome, size: int, violation: Callable[[IntArray], float],
                       rng: np.random.Generator) -> IntArray:
    """`size` distinct genomes (fewer if the space is smaller): the uniform ones that meet the budget, the
    all-lowest-bits genome, then random ones; `violation` is 0 for a genome that meets the budget and grows with
    how far it is over. Uniform genomes take at most half the population, evenly thinned over forms and bits: with
    every form of a generic profile there are up to 56 of them, and a population of uniform configs alone would
    start the search with no per-layer variety."""
    uniform = [x for x in genome.uniform_genomes() if violation(x) == 0]
    if len(uniform) > max(size // 2, 1):
        keep = np.unique(np.linspace(0, len(uniform) - 1, max(size // 2, 1)).round().astype(int))
        uniform = [uniform[i] for i in keep]
    rows: list[IntArray] = []
    seen: set[tuple[int, ...]] = set()

    def add(x: IntArray) -> None:
        if len(rows) < size and tuple(x) not in seen:
            seen.add(tuple(x))
            rows.append(x)

    for x in uniform:
        add(x)
    add(genome.xl)  # every free layer at the lowest bits: the budget check guarantees it fits
    spare: list[tuple[float, int, IntArray]] = []
    biased = violation(genome.xu) > 0  # only bias when the top of the space is over budget
    for _ in range(TRIES_PER_MEMBER * size):
        if len(rows) >= size:
            break
        x = random_genome(genome, rng, biased)
        if tuple(x) in seen:
            continue
        v = violation(x)
        if v == 0:
            add(x)
        else:
            seen.add(tuple(x))
            spare.append((v, len(spare), x))
    for _, _, x in sorted(spare, key=lambda s: (s[0], s[1])):
        if len(rows) >= size:
            break
        rows.append(x)
    return np.array(rows, dtype=np.int64).reshape(len(rows), genome.n_var)
