"""Job specs: pydantic models loaded from YAML; unknown keys are rejected naming the nearest valid one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantsearch._util import suggest
from quantsearch.errors import ConfigError, QuantsearchError

# The checks below import the registries they consult lazily, at validation time, so that importing this module
# stays cheap (no torchvision, ray or mlflow); each raises a one-line QuantsearchError naming the fix.


def check_dataset_name(name: str) -> str:
    """A registered dataset name (`quantsearch data info`); unknown names suggest the closest."""
    from quantsearch.data.datasets import DATASETS

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'{suggest(name, DATASETS)}; "
                          f"choose from {', '.join(sorted(DATASETS))}")
    return name


def check_model_name(name: str) -> str:
    """A reference model or `tv:<torchvision classifier>`; unknown names suggest the closest."""
    from quantsearch.models import list_models

    if name in list_models(include_torchvision=False):
        return name
    known = list_models(include_torchvision=True)  # imports torchvision: only for tv: names and typos
    if name in known:
        return name
    what = "torchvision classifier" if name.startswith("tv:") else "model"
    hint = f" (did you mean 'tv:{name}'?)" if f"tv:{name}" in known else suggest(name, known)
    raise ConfigError(f"unknown {what} '{name}'{hint}; see `quantsearch models list`")


def check_profile_name(name: str) -> str:
    """A backend profile name (`quantsearch profiles list`); unknown names suggest the closest."""
    from quantsearch.quant.profiles import get_profile

    get_profile(name)
    return name


def check_config_string(text: str) -> str:
    """`uniform:W<b>A<b>` with b in 2..8, or an existing, valid SubnetConfig JSON file."""
    if Path(text).suffix.lower() == ".json":
        from quantsearch.space.subnet import SubnetConfig

        if not Path(text).is_file():
            raise ConfigError(f"subnet file {text} does not exist; give an existing SubnetConfig JSON "
                              "(e.g. a search's best.json) or uniform:W<b>A<b>")
        SubnetConfig.load(text)  # bits outside 2..8 or a malformed file: one line
        return text
    from quantsearch.space.subnet import parse_uniform

    try:
        parse_uniform(text)
    except ConfigError as exc:
        msg = str(exc)
        if "must look like" not in msg:
            msg += "; write uniform:W<b>A<b> with b in 2..8, e.g. uniform:W4A4"
        raise ConfigError(msg) from exc
    return text


def _as_value_error(check: Any, value: Any) -> Any:
    """Run a check inside a pydantic validator: its one-line error becomes the field's error (dotted key)."""
    try:
        return check(value)
    except QuantsearchError as exc:
        raise ValueError(str(exc)) from exc


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """An output folder that exists as a folder or can be created (no file in the way); creates nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is an existing file, not a folder; pass a folder path (created when the "
                          "run starts)")
    for parent in (p.absolute(), *p.absolute().parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {p}: {parent} is a file, not a folder; pass a folder path")
            if not os.access(parent, os.W_OK):  # the folder, or the one it would be created in
                ro = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
                raise ConfigError(f"{what} {p} is not writable ({parent}: "
                                  f"{'read-only file system' if ro else 'permission denied'}); make it writable or "
                                  "pick another folder")
            break
    return p


def check_path_component(value: str) -> str:
    """A name the run turns into one folder name (job name, Ray run name): no separators, not '.' or '..', so
    every file a run writes stays inside its output folder."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise ValueError(f"{value!r} must be one folder name (no '/', '\\', '..'): it names folders inside the "
                         "output folder; use e.g. demo-resnet8")
    return value


def check_calib_images(key: str, value: int, available: int, split: str = "the train split") -> None:
    """Calibration images cannot exceed what the split they are drawn from holds."""
    if value > available:
        raise ConfigError(f"{key} is {value} but {split} holds only {available} images; set it to at most "
                          f"{available} (or use more data)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_S = TypeVar("_S", bound=BaseModel)


FILE_DATASETS = ("imagefolder", "cifar10")  # the users'-own-data sets: read from data.root, which they need


class DataSpec(_Strict):
    """Which dataset, and how its training set is split into train / val."""

    name: str = "fashion-mnist"
    root: str | None = Field(None, description="fashion-mnist: folder with the IDX files (default: QUANTSEARCH_DATA, "
                                               "Debian path); imagefolder: the image tree; cifar10: the folder "
                                               "holding cifar-10-batches-py/")
    val_size: int = Field(5000, ge=0, description="images held out of training; search measures on them (an "
                                                  "imagefolder val/ folder replaces them)")
    train_limit: int | None = Field(None, ge=1, description="use only this many training images (tests, demos)")
    test_limit: int | None = Field(None, ge=1, description="evaluate on only this many test images")
    split_seed: int = 0
    image_size: int | None = Field(None, ge=4, description="imagefolder: resize the shorter side to this and crop "
                                                           "the centre square; unset: every image must share a size")
    split: Literal["auto", "folders", "ratio"] = Field(
        "auto", description="imagefolder: folders = root/train, root/test (and root/val) of class folders; ratio = "
                            "root holds the class folders, test_fraction of each class is test; auto: folders when "
                            "root/train exists")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="imagefolder, split ratio: share of each class tested")
    stream: Literal["auto", True, False] = Field(
        "auto", description="imagefolder: decode files batch by batch in DataLoader workers instead of holding "
                            "every image in memory; auto: when the decoded set exceeds stream_above_mb")
    stream_above_mb: int = Field(2048, ge=1, description="stream auto: the decoded size (MB) above which it streams")
    workers: int = Field(2, ge=0, description="DataLoader worker processes decoding image files")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _as_value_error(check_dataset_name, v)

    @model_validator(mode="after")
    def _own_data(self) -> DataSpec:
        """imagefolder and cifar10 need a root; the image-folder keys mean nothing for the other sets."""
        if self.name in FILE_DATASETS and not self.root:
            where = "the image tree" if self.name == "imagefolder" else "the folder holding cifar-10-batches-py/"
            raise ValueError(f"the {self.name} dataset needs data.root: {where}")
        if self.name != "imagefolder":
            # set and not the default: a dumped spec (job.json, Ray workers) carries every key at its default
            given = [k for k in ("image_size", "split", "test_fraction", "stream") if k in self.model_fields_set
                     and getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"'data.{given[0]}' applies to the imagefolder dataset only; remove it")
        return self


class ModelSpec(_Strict):
    """Which architecture (see `quantsearch models list`)."""

    name: str = "resnet8"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _as_value_error(check_model_name, v)


class TrainingSpec(_Strict):
    """FP32 training hyper-parameters."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    augment: bool = Field(False, description="random crop (+flip where valid); off: 4 epochs reach more without")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class QuantTarget(_Strict):
    """What a model is quantized to: a config (uniform or per layer) deployable on a backend profile, the forms a
    uniform config takes, and how many images calibrate it. Nested as `qat.target` and `dqss.target`."""

    config: str = Field("uniform:W4A4", description="uniform:W<b>A<b> or a SubnetConfig JSON file (e.g. best.json)")
    profile: str = Field("generic", description="backend profile the config must be deployable on")
    weight_granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    weight_symmetric: bool = True
    act_symmetric: bool = False
    calib_images: int = Field(1024, ge=1, description="calibration images (at most what the train split holds)")

    @field_validator("config")
    @classmethod
    def _config(cls, v: str) -> str:
        return _as_value_error(check_config_string, v)

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        return _as_value_error(check_profile_name, v)


TARGET_KEYS = tuple(QuantTarget.model_fields)


def _nest(raw: Any, keys: tuple[str, ...], into: str, section: str) -> Any:
    """Move the flat keys `keys` of a raw section into its `into` sub-section (old specs wrote them flat).

    The same key both flat and nested is an error naming the new key."""
    if not isinstance(raw, dict) or not any(k in raw for k in keys):
        return raw
    flat = {k: raw[k] for k in keys if k in raw}
    nested = raw.get(into)
    if nested is None:
        nested = {}
    if not isinstance(nested, dict):
        return raw  # not a mapping: pydantic reports the type error on `into`
    both = sorted(set(flat) & set(nested))
    if both:
        raise ValueError(f"'{section}{both[0]}' and '{section}{into}.{both[0]}' are both given; "
                         f"'{section}{both[0]}' moved to '{section}{into}.{both[0]}': keep that one")
    rest = {k: v for k, v in raw.items() if k not in flat}
    return {**rest, into: {**nested, **flat}}


COMPILE_HELP = ("torch.compile the training forward/backward (one graph serves every subnet); null (auto): on for "
                "CUDA, off on CPU, where compiling costs more than short runs save")


class QATSpec(_Strict):
    """Independent LSQ quantization-aware training of one fixed config (the baseline for EQ-Net)."""

    legacy_keys: ClassVar[tuple[str, ...]] = TARGET_KEYS  # flat keys of specs written before `target`

    target: QuantTarget = QuantTarget()
    epochs: int = Field(1, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    scale_lr: float = Field(1e-3, gt=0, description="learning rate of scales and offsets")
    weight_decay: float = Field(0.0, ge=0)
    checkpoint: str | None = Field(None, description="FP32 checkpoint; default: <output_dir>/fp32/model.pt")
    compile: bool | None = Field(None, description=COMPILE_HELP)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """config, profile, forms and calib_images moved into `target`."""
        return _nest(raw, TARGET_KEYS, "target", "qat.")


SCALING_KEYS = ("workers", "use_gpu", "run_name", "storage_path", "max_failures", "num_to_keep")


class ScalingSpec(_Strict):
    """Ray Train: how many workers, on what, and the run's name, storage and fault tolerance (the supernet)."""

    workers: int = Field(0, ge=0, description="Ray Train workers; 0 runs in-process without Ray")
    use_gpu: bool = Field(False, description="one GPU per worker (a cuda job sets it when workers > 0)")
    run_name: str | None = Field(None, description="Ray run name; the same name resumes; default <job name>-supernet")
    storage_path: str | None = Field(None, description="Ray storage; default <output_dir>/ray")
    max_failures: int = Field(1, ge=0, description="worker failures tolerated (restart from the last checkpoint)")
    num_to_keep: int = Field(2, ge=1, description="checkpoints Ray keeps")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the Train workers' placement group: PACK (Ray's default: as few nodes "
                            "as fit) or SPREAD (one per node where it can)")

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        return None if v is None else check_path_component(v)


def _calibrator_name(name: str, layerwise_ok: bool = True) -> str:
    from quantsearch.quant.registry import check_calibrator

    return check_calibrator(name, layerwise_ok=layerwise_ok)


class SupernetSpec(_Strict):
    """EQ-Net supernet training: sandwich sampling, WDR and GPG losses, BN recalibration (Ray: `scaling`)."""

    profile: str = Field("generic", description="backend profile the elastic space is built from")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(128, ge=1, description="per worker")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(5e-4, gt=0, description="weights")
    scale_lr: float = Field(1e-3, gt=0, description="quantizer scales and offsets")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    n_random: int = Field(2, ge=0, description="random subnets per step between max and min")
    train_images: int | None = Field(None, ge=1, description="train on a seeded subset of the train split")
    wdr: bool = True
    wdr_kurt_weight: float = Field(0.015, ge=0)
    wdr_skew_weight: float = Field(1.0, ge=0)
    gpg: bool = True
    gpg_lambda: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    grad_clip: float | None = Field(1.0, gt=0, description="clip gradients by value (EQ-Net release); null: off")
    calib_images: int = Field(1024, ge=1, description="images for the clip-range initialisation")
    init_calibrator: str = Field("mse", description="how every scale table is initialised (a registered "
                                                    "per-tensor calibrator, e.g. mse or maxabs)")
    bn_images: int = Field(2048, ge=1, description="images for BN recalibration before measuring a subnet")
    checkpoint: str | None = Field(None, description="FP32 checkpoint; default <output_dir>/fp32/model.pt")
    compile: bool | None = Field(None, description=COMPILE_HELP)
    table_bits: list[int] = Field(default_factory=lambda: [8, 6, 4, 3, 2])
    table_forms: Literal["first", "all"] = Field("first", description="uniform table: the profile's first "
                                                  "network-wide form, or every one")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """The Ray keys moved to the job's `scaling` section (JobSpec moves them; alone they are an error)."""
        if isinstance(raw, dict):
            moved = [k for k in SCALING_KEYS if k in raw]
            if moved:
                raise ValueError(f"'supernet.{moved[0]}' moved to the job's scaling section: set "
                                 f"'scaling.{moved[0]}'")
        return raw

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        return _as_value_error(check_profile_name, v)

    @field_validator("init_calibrator")
    @classmethod
    def _init_calibrator(cls, v: str) -> str:
        return _as_value_error(lambda n: _calibrator_name(n, layerwise_ok=False), v)

    @field_validator("table_bits")
    @classmethod
    def _table_bits(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if not 2 <= b <= 8]
        if bad or not v:
            raise ValueError(f"bits {bad} are outside 2..8; list bit-widths in 2..8, e.g. [8, 6, 4, 3, 2]" if bad
                             else "list at least one bit-width in 2..8, e.g. [8, 4]")
        return v


DQSS_CANDIDATES = ("maxabs", "kl", "easyquant", "admm")


class DQSSSpec(_Strict):
    """DQSS: each layer's calibration algorithm (activations and weights) chosen by gradient, PTQ or QAT."""

    legacy_keys: ClassVar[tuple[str, ...]] = TARGET_KEYS

    mode: Literal["ptq", "qat"] = Field("ptq", description="ptq: only alpha/beta learn; qat: weights too, "
                                                           "then the argmax strategy is fine-tuned")
    target: QuantTarget = QuantTarget()
    candidates: tuple[str, ...] = Field(DQSS_CANDIDATES, description="the calibrators each layer chooses among")
    lr: float | None = Field(None, gt=0, description="alpha/beta learning rate; default 0.05 PTQ, 0.01 QAT")
    scale_lr: float | None = Field(None, ge=0, description="candidate scales; default 0 (frozen) PTQ, 1e-3 QAT")
    iters: int = Field(300, ge=1, description="PTQ search steps")
    batch_size: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0, description="T in softmax(alpha/T) at the start of the search")
    final_temperature: float = Field(
        0.1, gt=0, description="T stays at `temperature` for the first half of the search steps, then falls "
                               "geometrically to this by 90 % of them, so the mixture trained ends close to the "
                               "argmax strategy that deploys; = temperature: off")
    guard: bool = Field(True, description="PTQ: deploy the searched strategy only if its KL to the FP32 logits on the "
                                          "calibration images is at most that of each candidate on every layer; "
                                          "else that candidate (recorded in strategy.json)")
    search_epochs: float = Field(1.0, gt=0, description="QAT: epochs of the joint search")
    finetune_epochs: float = Field(1.0, ge=0, description="QAT: epochs fine-tuning the argmax strategy")
    weight_lr: float = Field(1e-3, gt=0, description="QAT: network weights")
    kd_weight: float = Field(1.0, ge=0, description="QAT: weight of KL to the FP32 logits beside CE")
    easyquant_steps: int = Field(100, ge=2, description="EasyQuant grid points per search")
    tie: bool = Field(True, description="one alpha for layers reading the same tensor")
    subsets: int = Field(0, ge=0, description="PTQ: K > 0 runs K Ray Tune trials on disjoint calibration subsets")
    checkpoint: str | None = Field(None, description="FP32 checkpoint; default: <output_dir>/fp32/model.pt")
    compile: bool | None = Field(None, description=COMPILE_HELP)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """config, profile, forms and calib_images moved into `target`."""
        return _nest(raw, TARGET_KEYS, "target", "dqss.")

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("list at least two different calibrators, e.g. [maxabs, kl, easyquant, admm]")
        return tuple(_as_value_error(_calibrator_name, n) for n in v)

    def arch_lr(self) -> float:
        """alpha/beta learning rate, defaulted by mode."""
        return self.lr if self.lr is not None else (0.01 if self.mode == "qat" else 0.05)

    def scales_lr(self) -> float:
        """Candidate-scale learning rate, defaulted by mode (0 = frozen)."""
        return self.scale_lr if self.scale_lr is not None else (1e-3 if self.mode == "qat" else 0.0)


class SampleSpec(_Strict):
    """Sampling and measuring subnets of a trained supernet (the data CQAP is fitted on)."""

    subnets: int = Field(300, ge=1, description="subnets to measure (stratified over average bits and net forms)")
    chunk: int = Field(25, ge=1, description="subnets per Ray Tune trial (the supernet is loaded once per trial)")
    workers: int = Field(0, ge=0, description="parallel Tune trials; 0 measures in-process without Ray")
    bn_images: int = Field(512, ge=1, description="images for BN recalibration before measuring each subnet")
    val_images: int | None = Field(None, ge=1, description="measure on this many val images (default: all of val)")
    forms: Literal["all", "first"] = Field("all", description="all: every network-wide form the profile allows; "
                                           "first: the profile's first form only")
    seed: int | None = Field(None, description="sampling seed; default the job seed")
    checkpoint: str | None = Field(None, description="supernet checkpoint; default <output_dir>/supernet/supernet.pt")


class PredictorSpec(_Strict):
    """Fitting CQAP, the conditional quantization-aware accuracy predictor, on measured subnets."""

    model: Literal["mlp", "gbr"] = Field("mlp", description="mlp: EQ-Net's CQAP; gbr: sklearn gradient boosting")
    hidden: int = Field(200, ge=1, description="MLP layer width")
    layers: int = Field(3, ge=1, description="MLP hidden layers")
    epochs: int = Field(300, ge=1, description="MLP training epochs (full batch)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    holdout: float = Field(0.25, gt=0, lt=1, description="share of measured subnets held out for the metrics")
    bands: int = Field(4, ge=1, description="BitOps bands (quantiles) the banded rank metrics are computed in")
    seed: int | None = Field(None, description="split and init seed; default the job seed")


Objective = Literal["accuracy", "bitops", "weight_bytes"]


class SearchBudget(_Strict):
    """Constraints a searched subnet must meet (at least one)."""

    bitops: float | str | None = Field(None, description="at most this many BitOps (MACs x w-bits x a-bits), or "
                                       "those of a uniform config: 'W3A3'")
    weight_bytes: float | str | None = Field(None, description="at most this many bytes of weights, or a uniform "
                                             "config's: 'W4A4'")
    avg_bits: float | None = Field(None, ge=2, description="at most this mean of per-layer (w+a)/2 bits (bits are "
                                                         "2..8: below 2 nothing fits)")

    @field_validator("bitops", "weight_bytes")
    @classmethod
    def _number_or_uniform(cls, v: float | str | None) -> float | str | None:
        if v is None:
            return v
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, str):
            from quantsearch.space.subnet import parse_uniform

            try:
                parse_uniform(v)
            except ConfigError as exc:
                raise ValueError(f"give a number or a uniform config like W3A3 ({exc})") from exc
            return v.removeprefix("uniform:")
        if v <= 0:
            raise ValueError("must be > 0")
        return float(v)

    def is_set(self) -> bool:
        """Whether any limit is given."""
        return any(v is not None for v in (self.bitops, self.weight_bytes, self.avg_bits))


class SearchSpec(_Strict):
    """NSGA-II mixed-precision search over the supernet's space under a budget."""

    profile: str = Field("generic", description="backend profile the searched configs must be deployable on")
    budget: SearchBudget = SearchBudget()
    fitness: Literal["predictor", "measured"] = Field("predictor", description="predictor: CQAP; measured: "
                                                      "each new individual measured on the supernet")
    objectives: list[Objective] = Field(default_factory=lambda: list[Objective](("accuracy", "bitops")),
                                        description="accuracy is maximised, costs minimised")
    population: int = Field(64, ge=4)
    generations: int = Field(30, ge=1)
    finalists: int = Field(5, ge=1, description="front members measured for real (val, then test once)")
    finalists_spread: bool = Field(False, description="false: the finalists with the best predicted accuracy (next "
                                                      "to the budget); true: spread over the front's cost range")
    forms: Literal["all", "first"] = Field("all", description="network-wide forms searched (as in sampling)")
    seed: int | None = Field(None, description="default the job seed")
    dqss: bool = Field(False, description="run DQSS on the best subnet's per-layer bits (needs a dqss section)")


class ExportSpec(_Strict):
    """ONNX QDQ export of the job's quantized result, checked in onnxruntime, registered in MLflow."""

    source: Literal["auto", "search", "search-dqss", "dqss", "qat"] = Field(
        "auto", description="what to export; auto: the last quantized result the job made (search-dqss, search, "
                            "dqss, then qat); after a search with DQSS, whichever of the two measured the better val")
    profile: str | None = Field(None, description="backend profile the graph must run on; default: search.profile "
                                                  "(source search*), else the dqss/qat target's profile")
    opset: int = Field(21, ge=13, description="ONNX opset; >= 21 stores 2..4-bit grids as INT4/UINT4")
    check_images: int | None = Field(None, ge=1, description="test images onnxruntime checks; default: all")
    calib_images: int = Field(1024, ge=0, description="training images that calibrate the output points W8A8 "
                                                      "layers get for onnxruntime's integer kernels; 0: none")
    top1_tol: float = Field(0.1, ge=0, description="largest allowed top-1 gap to PyTorch, points")
    logit_tol: float = Field(0.1, ge=0, description="largest allowed 99th-percentile per-image |logit gap| / "
                                                    "max(1, largest |logit|)")
    registry_name: str | None = Field(None, description="MLflow registered model name; default: the job name")


class JobSpec(_Strict):
    """A whole job: which data and model, how to train, where results go."""

    name: str = "job"
    seed: int = 0
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto (cuda when present); every stage uses it")
    output_dir: str = "runs/job"
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite:///<output_dir>/mlflow.db")
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    qat: QATSpec | None = None
    supernet: SupernetSpec | None = None
    dqss: DQSSSpec | None = None
    sample: SampleSpec | None = None
    predictor: PredictorSpec | None = None
    search: SearchSpec | None = None
    export: ExportSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """Specs written before the job-wide `device` key kept it under `training`, and the Ray keys under
        `supernet`: move them to `device` and `scaling`."""
        if not isinstance(raw, dict):
            return raw
        if isinstance(raw.get("training"), dict) and "device" in raw["training"]:
            old = raw["training"]["device"]
            raw = {**raw, "training": {k: v for k, v in raw["training"].items() if k != "device"}}
            raw.setdefault("device", old)
        sn = raw.get("supernet")
        if isinstance(sn, dict) and any(k in sn for k in SCALING_KEYS):
            flat = {k: sn[k] for k in SCALING_KEYS if k in sn}
            scaling = raw.get("scaling") or {}
            if isinstance(scaling, dict):
                both = sorted(set(flat) & set(scaling))
                if both:
                    raise ValueError(f"'supernet.{both[0]}' and 'scaling.{both[0]}' are both given; "
                                     f"'supernet.{both[0]}' moved to 'scaling.{both[0]}': keep that one")
                raw = {**raw, "supernet": {k: v for k, v in sn.items() if k not in flat},
                       "scaling": {**scaling, **flat}}
        return raw

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_path_component(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from quantsearch.device import check_device_name

        try:
            return check_device_name(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    def fp32_checkpoint(self, stage: str | None = None) -> Path:
        """The FP32 checkpoint a stage starts from: its section's `checkpoint`, else <output_dir>/fp32/model.pt
        (what the fp32 stage writes)."""
        section = getattr(self, stage) if stage else None
        if stage == "supernet" and section is None:
            section = SupernetSpec()
        explicit = getattr(section, "checkpoint", None)
        return Path(explicit) if explicit else Path(self.output_dir) / "fp32" / "model.pt"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk `loc` through nested pydantic models; return the model owning the last key."""
    cur: type[BaseModel] = model
    for key in loc[:-1]:
        field = cur.model_fields.get(str(key))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        cur = nxt
    return cur


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    if prefix == "--":  # a section built from command-line flags: name the flag
        dotted = "--" + str(loc[-1]).replace("_", "-") if loc else ""
    else:
        dotted = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        names = [*owner.model_fields, *getattr(owner, "legacy_keys", ())] if owner else []
        hint = suggest(str(loc[-1]), names) if owner else ""
        valid = f"; valid keys here: {', '.join(owner.model_fields)}" if owner and not hint else ""
        return f"unknown key '{dotted}'{hint}{valid}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"invalid value for '{dotted}': {msg}" if dotted else msg


def make_section(model: type[_S], section: str = "", **values: Any) -> _S:
    """Build a spec section (DataSpec, QATSpec, ...) from keyword values; a bad value is a one-line ConfigError
    naming `section.key` (section "--": the flag `--key`). Values of None are left out, so the section's defaults
    apply (and count as unset)."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, model, section)) from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b=c` into (['a', 'b'], yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=c` overrides to a raw spec dict (returns a new dict)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        cur = out
        for k in keys[:-1]:
            nxt = cur.get(k)
            if nxt is None:
                nxt = cur[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
            cur = nxt
        cur[keys[-1]] = value
    return out


def validate_spec(raw: dict[str, Any]) -> JobSpec:
    """Validate a raw dict as a JobSpec, turning pydantic errors into one-line ConfigErrors."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, JobSpec)) from exc


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load a YAML job spec, apply overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"job spec {path} does not exist; see jobs/ for examples")
    if path.is_dir():
        raise ConfigError(f"job spec {path} is a folder; pass a YAML file (see jobs/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the syntax") from exc
    if raw is None:
        raise ConfigError(f"job spec {path} is empty; write at least its name and sections (data, model, training, "
                          "...), e.g. copy jobs/demo.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, training, ...)")
    return validate_spec(apply_overrides(raw, overrides or []))
