"""What a job's stages read, from the spec alone: which result the export stage exports and its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantsearch.config import JobSpec
from quantsearch.errors import ConfigError


@dataclass(frozen=True)
class ExportPlan:
    """What the export stage exports: which result, the files it reads, the stage that writes them, the profile."""

    source: str
    checkpoint: Path | None
    subnet: Path | None
    strategy: Path | None
    producer: str
    profile: str | None


def export_plan(spec: JobSpec) -> ExportPlan:
    """Resolve export.source (auto: the last quantized result the spec makes) to the files it reads."""
    from quantsearch.supernet.sample_job import supernet_checkpoint

    ex = spec.export
    assert ex is not None
    out = Path(spec.output_dir)
    search, dq, qat = spec.search, spec.dqss, spec.qat
    made = [name for name, ok in (("search-dqss", search is not None and search.dqss), ("search", search is not None),
                                  ("dqss", dq is not None), ("qat", qat is not None)) if ok]
    source = ex.source if ex.source != "auto" else (made[0] if made else "")
    if source not in made:
        raise ConfigError(f"export.source '{source or ex.source}' needs "
                          + ({"search-dqss": "a search section with dqss: true", "search": "a search section",
                              "dqss": "a dqss section", "qat": "a qat section"}.get(source,
                                 "a quantized result: add a qat, dqss or search section")))
    if source == "search-dqss":
        assert search is not None
        return ExportPlan(source, None, None, out / "dqss-best" / "strategy.json", "search", ex.profile
                          or search.profile)
    if source == "search":
        assert search is not None
        ckpt = supernet_checkpoint(spec, spec.sample.checkpoint if spec.sample else None)
        return ExportPlan(source, ckpt, out / "search" / "best.json", None, "search", ex.profile or search.profile)
    if source == "dqss":
        assert dq is not None
        if dq.subsets:
            raise ConfigError("dqss.subsets combines K searches without saving one strategy file to export; set "
                              "export.source to another stage, or export one trial's strategy with "
                              "`quantsearch export --strategy <dqss>/subset<i>/strategy.json`")
        return ExportPlan(source, None, None, out / "dqss" / "strategy.json", "dqss", ex.profile or dq.target.profile)
    assert qat is not None
    return ExportPlan(source, out / "qat" / "model.pt", None, None, "qat", ex.profile or qat.target.profile)
