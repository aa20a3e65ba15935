"""Peer baseline: NVIDIA ModelOpt's mixed-precision search (`mtq.auto_quantize`) on our FP32 checkpoints, on CPU.

usage: python benchmarks/peer_modelopt.py [--ckpt runs/bench/fp32-resnet8/model.pt] [--bits 6.0 4.8]
needs: pip install "nvidia-modelopt==0.47.*" requests huggingface_hub   (modelopt's import needs the last two)

What is searched, per Conv2d / Linear, by ModelOpt's gradient (Fisher) sensitivity score and its LP solver:
  W8A8  = ModelOpt's built-in INT8_DEFAULT_CFG: 8-bit symmetric weights per output channel (axis 0), 8-bit
          symmetric per-tensor activations, max calibration. That is exactly "W8A8, per-channel weights".
  W4A4  = the same config with num_bits=4 on weights and inputs. ModelOpt 0.47 ships no integer per-channel
          W4A4 preset (INT4_AWQ / INT4_BLOCKWISE are weight-only with 128-blocks, W4A8_AWQ_BETA has FP8
          activations, NVFP4 / MXFP4 are block-scaled FP4), so this derived config is the closest match.
          Layers whose inputs are never negative on the calibration images (post-ReLU: every layer of
          resnet8 but the stem) get *unsigned* 4-bit activations (`act_unsigned="auto"`): our own W4A4 has
          affine activations, which on a [0, max] range are the same grid; signed 4 bits there would waste
          the sign bit (effectively 3 bits). Signed 8-bit activations are kept as ModelOpt ships them.
First and last layer (in execution order: the first conv and the last linear) are pinned to W8A8 with a
`module_search_spaces` entry (one candidate, `allow_no_quant=False`), not `disabled_layers`: a disabled layer
stays unquantized and ModelOpt then counts its weights at 16 bits in `effective_bits`, whereas our policy
quantizes them at 8 bits, and a pinned layer's 8 bits are counted in the budget like ours. Pinning the stem
also keeps the unsigned 4-bit activation format away from it (the normalised image is signed).
Searched layers may only be W8A8 or W4A4 (`allow_no_quant=False` by default) like our search space; with
`allow_no_quant=True` ModelOpt may also leave a layer unquantized (counted as 16 bits).

`effective_bits` is ModelOpt's weight-only budget: sum(weights x bits) / sum(weights) over the quantizable
layers, unquantized = 16. Activation bits do not enter it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

from quantsearch.data import PreparedData, batches, take  # noqa: E402
from quantsearch.space.build import build_model_from_checkpoint  # noqa: E402
from quantsearch.train.checkpoint import load_checkpoint  # noqa: E402
from quantsearch.train.loop import evaluate  # noqa: E402

PINNED_BITS = 8
FORMAT_LABELS = {8: "W8A8", 4: "W4A4", 16: "none"}


def _modelopt() -> Any:
    """`modelopt.torch.quantization`, or an ImportError that says how to install it."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise ImportError("the ModelOpt peer baseline needs `pip install \"nvidia-modelopt==0.47.*\" requests "
                          f"huggingface_hub` ({exc})") from exc
    return mtq


def modelopt_version() -> str:
    """The installed nvidia-modelopt version."""
    import modelopt

    return str(modelopt.__version__)


def int_formats(mtq: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(W8A8, W4A4 signed activations, W4A4 unsigned activations) as ModelOpt quantize configs.

    W8A8 is INT8_DEFAULT_CFG itself (so ModelOpt names it in its logs); the W4A4 pair are deep copies with 4-bit
    weight (still axis=0: per output channel) and input quantizers."""
    w8a8 = mtq.INT8_DEFAULT_CFG

    def four_bit(unsigned: bool) -> dict[str, Any]:
        cfg = copy.deepcopy(w8a8)
        for entry in cfg["quant_cfg"]:
            name = entry.get("quantizer_name")
            if name in ("*weight_quantizer", "*input_quantizer") and isinstance(entry.get("cfg"), dict):
                entry["cfg"] = {**entry["cfg"], "num_bits": 4}
                if name == "*input_quantizer" and unsigned:
                    entry["cfg"]["unsigned"] = True
        return cfg

    return w8a8, four_bit(False), four_bit(True)


def layer_scan(model: nn.Module, calib: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> tuple[list[str], dict[str, float]]:
    """Conv2d / Linear names in execution order (first call) and the smallest input each saw on `calib`."""
    names: dict[nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    order: list[str] = []
    low: dict[str, float] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        name = names[mod]
        if name not in low:
            order.append(name)
        low[name] = min(low.get(name, math.inf), float(inp[0].min()))

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with torch.no_grad():
            for x, _ in calib:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in names.values() if n not in low], low


def _recipe_bits(recipe: Any) -> int:
    return round(float(recipe.compression) * 16)


def auto_quantize_peer(fp32_ckpt_path: str | Path, data: PreparedData, effective_bits: float,
                       calib_images: int = 512, score_images: int = 512, seed: int = 0, *,
                       batch_size: int = 64, act_unsigned: bool | str = "auto", allow_no_quant: bool = False,
                       verbose: bool = False) -> dict[str, Any]:
    """Run ModelOpt's `auto_quantize` (W8A8 / W4A4, per-channel weights, first+last pinned at 8 bits) on the FP32
    model of `fp32_ckpt_path` under ModelOpt's weight-bit budget `effective_bits`; test top-1 with our evaluate.

    Calibration uses `calib_images` and sensitivity scoring `score_images` seeded training images (the first
    images of one seeded subset: ModelOpt reads both from the start of the same loader). `act_unsigned`: "auto"
    (unsigned 4-bit activations where every calibration input is >= 0), True (everywhere but the pinned
    layers) or False (signed, as ModelOpt's INT configs ship).

    Returns test_acc, fp32_test_acc, effective_bits_requested, effective_bits_achieved (ModelOpt's own
    accounting: weight-count-weighted bits, unquantized = 16), layers {name: {format, weight_bits, act_bits,
    act_unsigned, weights, pinned, modelopt_recipe}}, satisfied, seconds (the auto_quantize call),
    total_seconds, modelopt_version, and the settings used."""
    mtq = _modelopt()
    t_total = time.perf_counter()
    torch.manual_seed(seed)
    ckpt = load_checkpoint(fp32_ckpt_path, kind="fp32")
    model = build_model_from_checkpoint(ckpt).eval()  # eval: calibration passes must not move BN statistics

    n_images = max(calib_images, score_images)
    subset = take(data.train, n_images, seed)
    loader = list(batches(subset, batch_size, data.mean, data.std))
    num_calib_steps = max(1, math.ceil(min(calib_images, len(subset)) / batch_size))
    num_score_steps = max(1, math.ceil(min(score_images, len(subset)) / batch_size))

    order, low = layer_scan(model, loader[:num_calib_steps])
    if len(order) < 2:
        raise ValueError("the model needs at least two Conv2d/Linear layers (first and last are pinned)")
    pinned = [order[0], order[-1]]
    searched = [n for n in order if n not in pinned]
    if act_unsigned == "auto":
        unsigned = [n for n in searched if low.get(n, -1.0) >= 0.0]
    elif act_unsigned is True:
        unsigned = list(searched)
    elif act_unsigned is False:
        unsigned = []
    else:
        raise ValueError(f"act_unsigned must be 'auto', True or False, not {act_unsigned!r}")
    signed = [n for n in searched if n not in unsigned]
    modules = dict(model.named_modules())
    numel = {n: int(modules[n].weight.numel()) for n in order}
    lowest = (sum(numel[n] for n in pinned) * PINNED_BITS + sum(numel[n] for n in searched) * 4) / sum(numel.values())
    if not lowest - 1e-9 <= effective_bits <= 16:
        raise ValueError(f"effective_bits {effective_bits} is out of reach: with {pinned[0]} and {pinned[-1]} pinned "
                         f"at {PINNED_BITS} bits and W4A4 the smallest format, this model's budget must lie in "
                         f"[{lowest:.4f}, 16]")

    fp32_acc = evaluate(model, data.test, data.mean, data.std).top1
    w8a8, w4a4_s, w4a4_u = int_formats(mtq)
    spaces: list[dict[str, Any]] = [{"module_name_patterns": pinned, "quantization_formats": [w8a8],
                                     "allow_no_quant": False}]
    if unsigned:
        spaces.append({"module_name_patterns": unsigned, "quantization_formats": [w8a8, w4a4_u],
                       "allow_no_quant": allow_no_quant})
    if signed:
        spaces.append({"module_name_patterns": signed, "quantization_formats": [w8a8, w4a4_s],
                       "allow_no_quant": allow_no_quant})

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # "Received custom quantization formats for search": our W4A4 is a derived config, on purpose
        warnings.filterwarnings("ignore", message="Received custom quantization formats")
        qmodel, state = mtq.auto_quantize(
            model,
            constraints={"effective_bits": float(effective_bits)},
            quantization_formats=[w8a8, w4a4_s],  # global default; every layer is covered by `spaces` anyway
            data_loader=loader,
            forward_step=lambda m, b: m(b[0]),
            loss_func=lambda out, b: F.cross_entropy(out, b[1]),
            module_search_spaces=spaces,
            num_calib_steps=num_calib_steps,
            num_score_steps=num_score_steps,
            verbose=verbose,
            method="gradient",
        )
    seconds = time.perf_counter() - t0

    qmodel.eval()
    test_acc = evaluate(qmodel, data.test, data.mean, data.std).top1

    best = state["best"]
    modules = dict(qmodel.named_modules())
    layers: dict[str, dict[str, Any]] = {}
    total_w = 0
    total_bits = 0.0
    for key, recipe in best["recipe"].items():
        name = key.removesuffix(".quant_recipe")
        bits = _recipe_bits(recipe)
        weights = int(modules[name].weight.numel())
        total_w += weights
        total_bits += weights * bits
        layers[name] = {"format": FORMAT_LABELS.get(bits, f"{bits}-bit"), "weight_bits": bits,
                        "act_bits": bits if bits < 16 else None,
                        "act_unsigned": bits == 4 and name in unsigned, "weights": weights,
                        "pinned": name in pinned, "modelopt_recipe": str(recipe)}
    layers = {n: layers[n] for n in order if n in layers} | {n: v for n, v in layers.items() if n not in order}
    achieved = float(best["constraints"].get("effective_bits", total_bits / max(total_w, 1)))
    return {
        "test_acc": test_acc,
        "fp32_test_acc": fp32_acc,
        "effective_bits_requested": float(effective_bits),
        "effective_bits_achieved": achieved,
        "effective_bits_recomputed": total_bits / max(total_w, 1),
        "satisfied": bool(best.get("is_satisfied", False)),
        "layers": layers,
        "formats": {"W8A8": "INT8_DEFAULT_CFG", "W4A4": "INT8_DEFAULT_CFG with num_bits=4 (weights axis 0)"},
        "act_unsigned": act_unsigned,
        "allow_no_quant": allow_no_quant,
        "calib_images": min(calib_images, len(subset)),
        "score_images": min(score_images, len(subset)),
        "batch_size": batch_size,
        "test_images": len(data.test),
        "seed": seed,
        "seconds": seconds,
        "total_seconds": time.perf_counter() - t_total,
        "modelopt_version": modelopt_version(),
    }


def _ensure_checkpoint(ckpt: Path, train_limit: int, epochs: int) -> Path:
    """`ckpt` if it exists, else a quick resnet8 trained with `quantsearch train` into its folder."""
    if ckpt.is_file():
        return ckpt
    print(f"{ckpt} not found: training a quick resnet8 ({train_limit} images, {epochs} epochs)")
    subprocess.run([sys.executable, "-m", "quantsearch", "train", "--model", "resnet8", "--data", "fashion-mnist",
                    "--epochs", str(epochs), "--train-limit", str(train_limit), "--out", str(ckpt.parent),
                    "--quiet"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    return ckpt


def main() -> None:
    """Print (and optionally save) the peer's results at each budget."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "runs" / "bench" / "fp32-resnet8" / "model.pt")
    ap.add_argument("--bits", type=float, nargs="+", default=[6.0, 4.8])
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--score-images", type=int, default=512)
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on only this many test images")
    ap.add_argument("--act-unsigned", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--allow-no-quant", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=10000, help="if no checkpoint: train on this many images")
    ap.add_argument("--epochs", type=int, default=2, help="if no checkpoint: epochs")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/peer_modelopt.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from quantsearch.config import DataSpec
    from quantsearch.data import prepare_data

    ckpt = _ensure_checkpoint(args.ckpt, args.train_limit, args.epochs)
    data = prepare_data(DataSpec(name=load_checkpoint(ckpt, kind="fp32")["dataset"], test_limit=args.test_limit))
    unsigned: bool | str = "auto" if args.act_unsigned == "auto" else args.act_unsigned == "yes"
    runs = []
    for bits in args.bits:
        res = auto_quantize_peer(ckpt, data, bits, args.calib_images, args.score_images, args.seed,
                                 act_unsigned=unsigned, allow_no_quant=args.allow_no_quant)
        runs.append(res)
        print(f"\neffective_bits {bits:.2f} -> achieved {res['effective_bits_achieved']:.3f}  "
              f"test {100 * res['test_acc']:.2f}% (fp32 {100 * res['fp32_test_acc']:.2f}%)  "
              f"auto_quantize {res['seconds']:.1f}s  modelopt {res['modelopt_version']}")
        for name, layer in res["layers"].items():
            tag = " (pinned)" if layer["pinned"] else ""
            act = "u" if layer["act_unsigned"] else ""
            print(f"  {name:24s} {layer['format']}{act:1s} {layer['weights']:6d} weights{tag}")
    if args.save:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _common import write_result

        write_result("peer_modelopt", {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT)
                                                          else ckpt), "runs": runs})


if __name__ == "__main__":
    main()
