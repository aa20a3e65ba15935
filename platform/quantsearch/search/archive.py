"""The search archive: a JSON file rewritten (atomically) after every generation, from which a search resumes.

It holds the settings the search depends on and their fingerprint (a resume under other settings is refused, naming
what differs), the seed, the last finished generation, every evaluated genome with its fitness, the population with
the rank and crowding NSGA-II's tournament reads, and the state of the algorithm's random generator. Genomes stand
for configs through the layout stored beside them (Genome: form index, then weight/activation bit indices of the
free layers); with the settings equal, a resumed search continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_bytes
from quantsearch.config import SearchSpec
from quantsearch.errors import ConfigError
from quantsearch.space.cost import LayerCost
from quantsearch.space.genome import Genome

FORMAT = 1

Genes = tuple[int, ...]


@dataclass(frozen=True)
class Evaluated:
    """One fitness value in the archive."""

    genes: Genes
    accuracy: float
    generation: int


@dataclass(frozen=True)
class ArchiveState:
    """Everything a resumed search needs; `generation` is the last one finished."""

    settings: dict[str, Any]
    seed: int
    generation: int
    evaluated: tuple[Evaluated, ...]
    population: tuple[Genes, ...]
    rank: tuple[int | None, ...]
    crowding: tuple[float | None, ...]  # None: infinite (boundary points) or never ranked (infeasible)
    rng: dict[str, Any]

    def fingerprint(self) -> str:
        """sha256 of the settings."""
        return fingerprint(self.settings)


def search_settings(genome: Genome, costs: list[LayerCost], spec: SearchSpec) -> dict[str, Any]:
    """What a search's course depends on besides the seed and the fitness (the number of generations is left out:
    a finished search may be resumed with more)."""
    return {
        "layers": list(genome.space.layer_names), "profile": genome.space.profile.name,
        "pinned": {n: b for n, b in genome.space.pinned}, "forms": [f.label() for f in genome.forms],
        "free_layers": list(genome.free), "weight_bits": list(genome.w_bits), "act_bits": list(genome.a_bits),
        "costs": [asdict(c) for c in costs], "budget": spec.budget.model_dump(),
        "objectives": list(spec.objectives), "population": spec.population,
    }


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def save_archive(path: Path, state: ArchiveState) -> None:
    """Write the archive atomically (never half-written); compact JSON: it is rewritten every generation and
    holds every evaluated genome."""
    atomic_write_bytes(path, json.dumps({
        "format": FORMAT, "fingerprint": state.fingerprint(), "seed": state.seed, "generation": state.generation,
        "settings": state.settings,
        "evaluated": [{"genome": list(e.genes), "accuracy": e.accuracy, "generation": e.generation}
                      for e in state.evaluated],
        "population": {"genomes": [list(g) for g in state.population], "rank": list(state.rank),
                       "crowding": list(state.crowding)},
        "rng": state.rng,
    }, separators=(",", ":")).encode() + b"\n")


def load_archive(path: Path) -> ArchiveState:
    """Read an archive; anything unreadable raises ConfigError naming the fix."""
    try:
        d = json.loads(Path(path).read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
        pop = d["population"]
        state = ArchiveState(
            d["settings"], int(d["seed"]), int(d["generation"]),
            tuple(Evaluated(tuple(int(g) for g in e["genome"]), float(e["accuracy"]), int(e["generation"]))
                  for e in d["evaluated"]),
            tuple(tuple(int(g) for g in x) for x in pop["genomes"]),
            tuple(None if r is None else int(r) for r in pop["rank"]),
            tuple(None if c is None else float(c) for c in pop["crowding"]), d["rng"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"search archive {path} is unreadable ({exc}); delete it to start the search afresh") from exc
    if state.fingerprint() != d["fingerprint"]:
        raise ConfigError(f"search archive {path} was edited (its fingerprint does not match); delete it to start "
                          "the search afresh")
    return state


def check_resumable(path: Path, state: ArchiveState, settings: dict[str, Any], seed: int) -> None:
    """Refuse, in one line naming what differs, to resume an archive written under other settings or seed."""
    if state.seed != seed:
        raise ConfigError(f"search archive {path} was written with seed {state.seed}, not {seed}; use that seed, or "
                          "delete the archive to start afresh")
    differ = sorted(k for k in settings.keys() | state.settings.keys() if settings.get(k) != state.settings.get(k))
    if differ:
        raise ConfigError(f"search archive {path} was written with other settings ({', '.join(differ)} differ); "
                          "restore them, or delete the archive to start afresh")


def crowding_out(value: Any) -> float | None:
    """A crowding distance as JSON can hold it: infinite and missing both become None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
