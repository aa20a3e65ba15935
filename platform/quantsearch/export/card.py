"""The model card written beside an exported model: per-layer bits, forms, integer types and calibration methods,
BitOps and weight bytes, and the accuracies measured in PyTorch and onnxruntime (Markdown + JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantsearch._util import atomic_write_bytes, atomic_write_json
from quantsearch.export.qdq import LayerGraph
from quantsearch.export.specs import LayerExport
from quantsearch.space.cost import LayerCost

CARD_FORMAT = "quantsearch-model-card/1"


def card_paths(model_path: str | Path) -> tuple[Path, Path]:
    """(Markdown, JSON) card paths beside a model: model.onnx -> model.card.md, model.card.json."""
    p = Path(model_path)
    stem = p.with_suffix("") if p.suffix else p
    return stem.with_name(stem.name + ".card.md"), stem.with_name(stem.name + ".card.json")


def layer_rows(specs: list[LayerExport], placed: list[LayerGraph], costs: list[LayerCost],
               calibration: Mapping[str, tuple[str, str]] | None,
               outputs: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One JSON-friendly row per quantized layer (`outputs`: the output quantization points some W8A8 layers get,
    see `requant`; a row without one has output None)."""
    where = {g.name: g for g in placed}
    cost = {c.name: c for c in costs}
    rows = []
    for s in specs:
        g, c = where[s.name], cost.get(s.name)
        w, a = s.config.weight, s.config.activation
        cal = None if calibration is None or s.name not in calibration else calibration[s.name]
        rows.append({
            "name": s.name, "op": g.op, "pinned": s.pinned, "bn_folded": g.bn_folded,
            "weight": {**w.to_dict(), "onnx_type": g.weight_container, "shift": g.weight_shift, "axis": g.weight_axis,
                       "zero_points": list(g.weight_zero_points[:8])},
            "activation": {**a.to_dict(), "unsigned": s.act.unsigned, "onnx_type": g.act_container,
                           "shift": g.act_shift, "clipped_to_grid": g.act_clipped, "scale": s.act.scale,
                           "zero_point": s.act.zero_point + g.act_shift},
            "calibration": None if cal is None else {"activation": cal[0], "weight": cal[1]},
            "output": None if outputs is None or s.name not in outputs else dict(outputs[s.name]),
            "macs": None if c is None else c.macs,
            "bitops": None if c is None else c.macs * w.bits * a.bits,
            "weight_bytes": None if c is None else c.params * w.bits / 8,
        })
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(card: Mapping[str, Any]) -> str:
    """The Markdown rendering of a card dict."""
    acc, tot, ort = card["accuracy"], card["totals"], card["onnxruntime"]
    lines = [
        f"# Model card: {card['model']}", "",
        f"ONNX QDQ, opset {card['opset']}, exported by quantsearch {card['versions']['quantsearch']} "
        f"(torch {card['versions']['torch']}, onnx {card['versions']['onnx']}, "
        f"onnxruntime {card['versions']['onnxruntime']}); profile: {card['profile'] or 'none (generic)'}.", "",
        f"Input `{card['input']['name']}` {card['input']['shape']} float32 -> output `{card['output']}` (logits).", "",
        "## Accuracy (checked at export)", "",
        "| | top-1 (%) |", "|---|---|",
        f"| PyTorch fake-quant (reference) | {_fmt(acc['torch_top1'])} |",
        f"| onnxruntime (CPU) | {_fmt(acc['ort_top1'])} |", "",
        f"{acc['samples']} images; top-1 agreement {_fmt(acc['top1_agreement'])} %; max |logit difference| "
        f"{acc['max_abs_logit_diff']:.3g} (largest |logit| {acc['max_abs_logit']:.3g}). {acc['reference']}", "",
        "## Cost", "",
        f"- MACs: {tot['macs']:,}", f"- BitOps: {tot['bitops']:,.0f} ({tot['bitops'] / 1e9:.4f} GBitOps)",
        f"- Weight bytes (quantized layers): {tot['weight_bytes']:,.0f} (float32: {tot['float32_weight_bytes']:,.0f})",
        f"- Mean bits: W {tot['mean_weight_bits']:.2f} / A {tot['mean_act_bits']:.2f}", "",
        "## onnxruntime", "",
        f"- QuantizeLinear/DequantizeLinear nodes: {card['n_qdq']}",
        f"- Conv/Gemm/MatMul as integer kernels in the optimized graph: {ort['integer_kernels']} "
        f"(still float: {ort['float_kernels']})",
        f"- Optimized graph ops: {', '.join(f'{k} x{v}' for k, v in sorted(ort['ops'].items()))}", "",
        "## Layers", "",
        "| layer | op | W bits | W form | W type | A bits | A form | A type | calibration (A / W) | BitOps | "
        "weight bytes | BN folded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in card["layers"]:
        w, a, cal = r["weight"], r["activation"], r["calibration"]
        lines.append(
            f"| {r['name']}{' (pinned)' if r['pinned'] else ''} | {r['op']} | {w['bits']} | "
            f"{'pc' if w['granularity'] == 'per_channel' else 'pt'}/{'sym' if w['symmetric'] else 'asym'} | "
            f"{w['onnx_type']} | {a['bits']} | {'sym' if a['symmetric'] else 'asym'}"
            f"{'/unsigned' if a['unsigned'] else ''} | {a['onnx_type']}{' +Clip' if a['clipped_to_grid'] else ''} | "
            f"{'-' if cal is None else cal['activation'] + ' / ' + cal['weight']} | {_fmt(r['bitops'])} | "
            f"{_fmt(r['weight_bytes'], 1)} | {'yes' if r['bn_folded'] else 'no'} |")
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    prov = card.get("provenance")
    if prov:
        lines += ["", "## Provenance", ""]
        lines += [f"- {k}: `{v}`" for k, v in prov.items() if not isinstance(v, Mapping)]
        for k, v in prov.items():
            if isinstance(v, Mapping):
                lines += ["", f"{k}:", "", "```json", json.dumps(v, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def write_card(card: Mapping[str, Any], model_path: str | Path) -> tuple[Path, Path]:
    """Write the card's Markdown and JSON beside the model (atomically); returns their paths."""
    md, js = card_paths(model_path)
    atomic_write_json(js, dict(card))
    atomic_write_bytes(md, markdown(card).encode())
    return md, js


def read_card(path: str | Path) -> dict[str, Any]:
    """Read a card's JSON."""
    out: dict[str, Any] = json.loads(Path(path).read_text())
    return out
