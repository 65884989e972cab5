"""Typed config schemas (the only place that knows the config's shape) and boundary validation.

Every YAML under ``vaerun/conf/<group>/`` names the schema of its group in its defaults list,
so Hydra rejects typo'd keys and wrong types while composing. Semantic checks (negative β,
zero batch size, ...) live in :func:`validate` and raise :class:`ConfigError`, which names the
key, the value and the fix. No torch import here: the CLI and tab completion import this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from vaerun.errors import ConfigError


# ---------------------------------------------------------------- choices (Enums, not Literal:
# OmegaConf 2.3 rejects Literal; an Enum typo lists the valid values).
class DatasetName(Enum):
    shapes = "shapes"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    image_folder = "image_folder"


class Binarize(Enum):
    none = "none"
    static = "static"
    dynamic = "dynamic"


class ModelName(Enum):
    mlp = "mlp"
    conv = "conv"
    autoregressive = "autoregressive"


class Activation(Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    elu = "elu"
    gelu = "gelu"
    silu = "silu"
    tanh = "tanh"


class Init(Enum):
    default = "default"
    xavier = "xavier"
    kaiming = "kaiming"


class LikelihoodName(Enum):
    bernoulli = "bernoulli"
    gaussian = "gaussian"
    continuous_bernoulli = "continuous_bernoulli"
    logistic = "logistic"


# σ of the Gaussian likelihood: none = fixed at `sigma`; global = one learned σ; channel = one
# learned σ per image channel; pixel = the decoder predicts log σ per pixel from z. ("global" is a
# Python keyword, hence the functional Enum API.)
LearnSigma = Enum("LearnSigma", {"none": "none", "global": "global", "channel": "channel", "pixel": "pixel"})


class ScheduleName(Enum):
    constant = "constant"
    linear = "linear"
    cyclical = "cyclical"
    sigmoid = "sigmoid"


class OptimizerName(Enum):
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"
    sgd = "sgd"


class LRScheduler(Enum):
    none = "none"
    cosine = "cosine"
    step = "step"
    plateau = "plateau"
    burda = "burda"      # Burda et al. 2015: stage i (0..7) lasts 3^i epochs at lr·10^(−i/7)


class OnNan(Enum):
    rollback = "rollback"  # reload the last good checkpoint, halve the learning rate, retry
    skip = "skip"          # drop the step (no update) and go on with the next batch
    stop = "stop"          # stop at once with status `failed`


class OnBadImage(Enum):
    error = "error"
    skip = "skip"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


# How z enters the autoregressive decoder: spatial = a (channels, H, W) map, so z can say where
# things are; global = one vector broadcast over the image (conditional PixelCNN), easier to ignore.
# ("global" is a Python keyword, hence the functional form; OmegaConf matches enum names.)
ARCond = Enum("ARCond", {"spatial": "spatial", "global": "global"})


class Precision(Enum):
    fp32 = "fp32"  # float32 everywhere
    tf32 = "tf32"  # float32 tensors, matrix products in TensorFloat-32 where the hardware has it (CUDA Ampere+)
    bf16 = "bf16"  # encoder and decoder under bfloat16 autocast; the terms, loss and evaluation stay float32


class CompileMode(Enum):
    default = "default"                  # Inductor kernels: elementwise work fused into few loops
    reduce_overhead = "reduce-overhead"  # the same, replayed as CUDA graphs: one launch per pass (CUDA only)
    max_autotune = "max-autotune"        # autotuned matrix-product kernels and CUDA graphs (long compile)


class Progress(Enum):
    auto = "auto"  # a live bar on an interactive terminal under the basic launcher, else log lines
    bar = "bar"
    log = "log"


# ---------------------------------------------------------------- group schemas
@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.shapes  # which data (dataset=NAME picks the option and its defaults)
    root: Optional[str] = None         # torchvision datasets; null = $VAERUN_DATA or ~/.cache/vaerun/data
    download: bool = True              # torchvision datasets: try to download when files are missing
    path: Optional[str] = None         # image_folder: the folder of images (searched recursively)
    image_size: int = 32               # shapes, image_folder (mnist/fashion_mnist: 28, cifar10: 32)
    channels: int = 1                  # image_folder: 1 = grayscale, 3 = RGB
    num_examples: int = 20000          # shapes: examples generated for train + val
    val_size: int = 2000               # examples held out from the training set for validation
    test_size: int = 2000              # shapes, image_folder: size of the test split
    subset: Optional[int] = None       # keep only the first N examples of each split
    binarize: Binarize = Binarize.none  # static: one fixed Bernoulli draw per pixel; dynamic: a fresh draw per batch
    on_bad_image: OnBadImage = OnBadImage.error  # image_folder: a corrupt file stops, or is skipped and counted


@dataclass
class ModelConfig:
    name: ModelName = ModelName.mlp  # the encoder/decoder architecture (model=NAME)
    latent_dim: int = 10               # D, the size of z
    hidden: List[int] = field(default_factory=lambda: [512, 256])    # mlp
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])  # conv, stride-2 stages
    kernel: int = 4                                                  # conv
    activation: Activation = Activation.relu  # the hidden layers' nonlinearity
    init: Init = Init.default          # weight initialisation: torch's default, Xavier or Kaiming
    ar_layers: int = 6                 # autoregressive: masked (gated) conv layers: decoder power
    ar_kernel: int = 5                 # autoregressive: masked kernel size (odd): receptive field
    ar_width: int = 64                 # autoregressive: channels (rounded up to a multiple of the image channels)
    ar_cond_channels: int = 32         # autoregressive: channels of the z conditioning map
    ar_cond: ARCond = ARCond.spatial   # autoregressive: z as a spatial map or one global vector


@dataclass
class LikelihoodConfig:
    name: LikelihoodName = LikelihoodName.bernoulli  # p(x|z) (likelihood=NAME)
    sigma: float = 0.1                 # gaussian: fixed σ, or the initial σ when learned
    learn_sigma: LearnSigma = LearnSigma.none  # gaussian: σ fixed, one learned, one per channel, or per pixel from z
    min_log_sigma: float = -6.0        # gaussian: log σ is clamped to [min, max]
    max_log_sigma: float = 2.0         # gaussian: the upper clamp of log σ
    mixtures: int = 1                  # logistic: mixture components per channel (1 = one discretized logistic)


@dataclass
class ScheduleConfig:
    name: ScheduleName = ScheduleName.constant  # β over training (schedule=NAME)
    beta_start: float = 0.0            # β at the start of a warm-up or of each cycle
    warmup_steps: int = 1000           # linear, sigmoid: steps from beta_start to beta
    delay_steps: int = 0               # linear, sigmoid: steps held at beta_start first
    cycles: int = 4                    # cyclical: number of cycles over the whole run
    ratio: float = 0.5                 # cyclical: fraction of each cycle spent ramping


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam  # optimizer=NAME
    lr: float = 1e-3                   # learning rate
    weight_decay: float = 0.0          # L2 penalty (adam, sgd, rmsprop) or decoupled decay (adamw)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-8                  # adam, adamw, rmsprop: the denominator's epsilon
    momentum: float = 0.0              # sgd, rmsprop
    grad_clip: float = 0.0             # max global gradient norm; 0 = off
    fused: bool = True                 # adam, adamw: one fused update kernel where torch has it (CPU, CUDA)
    lr_scheduler: LRScheduler = LRScheduler.none  # the learning rate over training (plateau steps on the validation loss)
    lr_step_size: int = 2000           # step: decay every N optimizer steps
    lr_gamma: float = 0.5              # step, plateau: multiply the lr by this
    lr_patience: int = 2               # plateau: evaluations without improvement
    lr_min: float = 0.0                # cosine, plateau: floor
    lr_stage_scale: float = 1.0        # burda: stage i lasts growth^i·scale epochs (1 = the paper's 3,280 epochs)
    lr_stage_growth: float = 3.0       # burda: 3 = the paper's 1, 3, 9, ... epochs; 1 = eight equal stages
    ema: float = 0.0                   # evaluate and checkpoint a moving average of the weights with this decay; 0 = off


@dataclass
class DiagnosticsConfig:
    au_threshold: float = 0.01         # active unit: Cov_x(E_q[z_d]) above this (Burda et al. 2015)
    collapse_threshold: float = 0.01   # a latent dim with KL below this many nats counts as collapsed
    early_fraction: float = 0.2        # "early in training": the first fraction of the steps
    mi_examples: int = 1000            # validation examples for the mutual-information estimate
    iw_samples: int = 50               # K of nll_iw at each validation pass; 0 = off
    iw_examples: int = 256             # validation examples nll_iw is computed on during training
    grad_norms: bool = True            # measure how hard recon and β·KL pull on the encoder at each validation


@dataclass
class CapacityConfig:
    """Capacity annealing (Burgess et al. 2018): the KL term becomes β·γ·|KL − C(step)|."""
    gamma: float = 0.0                 # γ; 0 = off (the paper uses 1000 on dSprites)
    c_max: float = 25.0                # C rises linearly from 0 to c_max nats ...
    steps: int = 10000                 # ... over this many steps ...
    delay_steps: int = 0               # ... after this many


@dataclass
class AggressiveConfig:
    """Aggressive inference-network training (He et al. 2019): before each step, encoder-only
    updates on fresh batches until the loss stops falling; off once validation MI stops rising."""
    enabled: bool = False              # on: aggressive training from the first step
    max_inner: int = 100               # encoder-only updates per step at most (the paper: 100)
    check_every: int = 15              # compare the summed loss of successive windows of this many updates


@dataclass
class PicturesConfig:
    """End-of-training pictures in pictures/ (the same as `vaerun traverse` / `vaerun latents`)."""
    traverse: Optional[bool] = None    # null = on, except for an autoregressive decoder on the CPU (pixel-by-pixel)
    latents: bool = True               # latent map + posterior σ per dim (encoder only: cheap)
    traverse_steps: int = 9            # images per traversal row
    traverse_range: float = 2.5        # each dim swept over ±range around the prior mean
    max_dims: int = 10                 # traversal rows at most (the informative dims, by KL)


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    likelihood: LikelihoodConfig = MISSING
    schedule: ScheduleConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    pictures: PicturesConfig = field(default_factory=PicturesConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    aggressive: AggressiveConfig = field(default_factory=AggressiveConfig)
    beta: float = 1.0                  # target β of every schedule
    free_bits: float = 0.0             # λ nats per latent dim (Kingma et al. 2016); 0 = off
    epochs: int = 12                   # passes over the training split
    max_steps: Optional[int] = None    # when set, overrides epochs
    batch_size: int = 128              # examples per training step
    eval_batch_size: int = 1000        # examples per evaluation batch (the numbers do not depend on it)
    seed: int = 0                      # every random draw: data, init, ε, batches, evaluation
    device: Device = Device.auto       # auto: CUDA, then MPS, then the CPU
    precision: Precision = Precision.fp32  # training's arithmetic (evaluation is always float32)
    compile: bool = False              # torch.compile the training step's forward pass (and its backward)
    compile_mode: CompileMode = CompileMode.default  # torch.compile's mode (with compile=true)
    fused_mlp: bool = True             # MLP models: the step's backward written out, no autograd graph (faster)
    flush_denormals: bool = True       # CPU: denormal floats computed as 0 (FTZ/DAZ; Adam's moments decay into them)
    eval_every: int = 500              # steps between validation passes (also at the end)
    sample_every: int = 1000           # steps between sample/reconstruction grids (also at the end)
    num_samples: int = 64              # images in each sample grid
    log_every: int = 50                # steps between train log lines / metrics records
    progress: Progress = Progress.auto  # bar on a terminal, log lines elsewhere (auto)
    tensorboard: bool = True           # also write TensorBoard event files into tb/
    out_dir: str = "outputs"           # root of run folders (used by hydra.run.dir / sweep.dir)
    resume: Optional[str] = None       # a run folder to continue from its checkpoints/last.pt
    checkpoint_every: int = 500        # steps between checkpoints/last.pt (also at every eval and the end)
    on_nan: OnNan = OnNan.rollback     # what a non-finite loss or gradient does
    nan_retries: int = 3               # rollback: retries (each halves the lr) before the run fails
    nan_max_skips: int = 20            # skip: consecutive skipped steps before the run fails
    early_stop: int = 0                # validations without a better validation ELBO before training stops; 0 = off
    collapse_stop: int = 0             # validations in a row at the target β with every latent dim below
                                       # diagnostics.collapse_threshold before training stops; 0 = off


GROUPS = ("dataset", "model", "likelihood", "schedule", "optimizer")
_SCHEMAS = {"dataset": DatasetConfig, "model": ModelConfig, "likelihood": LikelihoodConfig,
            "schedule": ScheduleConfig, "optimizer": OptimizerConfig}


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent). Each option YAML pulls its
    group's schema in with ``/<group>_schema@_here_`` (a root-level config, so schemas never show up
    as options of the group)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schema in _SCHEMAS.items():
        cs.store(name=f"{group}_schema", node=schema, package=group)


# ---------------------------------------------------------------- semantic validation
def _check(ok: bool, key: str, value: Any, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(key, value, problem, fix)


def validate(cfg: TrainConfig) -> None:
    """Semantic checks on a composed, typed config, before any tensor is allocated."""
    d, m, lk, s, o = cfg.dataset, cfg.model, cfg.likelihood, cfg.schedule, cfg.optimizer
    _check(cfg.beta >= 0, "beta", cfg.beta, "β weights the KL term and must be >= 0", "use e.g. beta=1")
    _check(cfg.free_bits >= 0, "free_bits", cfg.free_bits, "must be >= 0 nats per dimension",
           "use free_bits=0 (off) or e.g. free_bits=0.25")
    _check(cfg.batch_size > 0, "batch_size", cfg.batch_size, "must be a positive integer", "use e.g. batch_size=128")
    _check(cfg.eval_batch_size > 0, "eval_batch_size", cfg.eval_batch_size, "must be positive", "use e.g. eval_batch_size=1000")
    _check(cfg.epochs > 0 or cfg.max_steps is not None, "epochs", cfg.epochs, "must be positive",
           "use e.g. epochs=10, or set max_steps")
    if cfg.max_steps is not None:
        _check(cfg.max_steps > 0, "max_steps", cfg.max_steps, "must be positive", "use e.g. max_steps=1000, or max_steps=null")
    for key in ("eval_every", "sample_every", "log_every", "checkpoint_every"):
        _check(getattr(cfg, key) > 0, key, getattr(cfg, key), "must be a positive number of steps", f"use e.g. {key}=500")
    _check(cfg.compile or cfg.compile_mode == CompileMode.default, "compile_mode", cfg.compile_mode.name,
           "chooses how torch.compile builds the step, and compile is off",
           f"add compile=true (compile=true compile_mode={cfg.compile_mode.name}), or drop compile_mode")
    _check(cfg.nan_retries >= 0, "nan_retries", cfg.nan_retries, "must be >= 0", "use e.g. nan_retries=3")
    _check(cfg.nan_max_skips > 0, "nan_max_skips", cfg.nan_max_skips, "must be positive", "use e.g. nan_max_skips=20")
    _check(cfg.early_stop >= 0, "early_stop", cfg.early_stop, "must be >= 0 (validations; 0 = off)", "use e.g. early_stop=3")
    _check(cfg.collapse_stop >= 0, "collapse_stop", cfg.collapse_stop, "must be >= 0 (validations; 0 = off)",
           "use e.g. collapse_stop=2")
    dg = cfg.diagnostics
    _check(dg.au_threshold > 0, "diagnostics.au_threshold", dg.au_threshold, "must be positive", "use e.g. 0.01")
    _check(dg.collapse_threshold > 0, "diagnostics.collapse_threshold", dg.collapse_threshold, "must be positive",
           "use e.g. diagnostics.collapse_threshold=0.01")
    _check(0 < dg.early_fraction <= 1, "diagnostics.early_fraction", dg.early_fraction, "must be in (0, 1]",
           "use e.g. diagnostics.early_fraction=0.2")
    _check(dg.mi_examples > 1, "diagnostics.mi_examples", dg.mi_examples, "needs at least 2 examples", "use e.g. 1000")
    _check(dg.iw_samples >= 0, "diagnostics.iw_samples", dg.iw_samples, "must be >= 0 (0 = off)", "use e.g. 50")
    _check(dg.iw_examples > 0, "diagnostics.iw_examples", dg.iw_examples, "must be positive", "use e.g. 256")
    _check(cfg.num_samples > 0, "num_samples", cfg.num_samples, "must be positive", "use e.g. num_samples=64")
    cap = cfg.capacity
    _check(cap.gamma >= 0, "capacity.gamma", cap.gamma, "must be >= 0 (0 = off)", "use e.g. capacity.gamma=100")
    _check(cap.c_max >= 0, "capacity.c_max", cap.c_max, "is a KL in nats and must be >= 0", "use e.g. capacity.c_max=25")
    _check(cap.steps >= 1, "capacity.steps", cap.steps, "must be at least 1", "use e.g. capacity.steps=10000")
    _check(cap.delay_steps >= 0, "capacity.delay_steps", cap.delay_steps, "must be >= 0", "use capacity.delay_steps=0")
    ag = cfg.aggressive
    _check(ag.max_inner >= 1, "aggressive.max_inner", ag.max_inner, "must be at least 1", "use aggressive.max_inner=100")
    _check(ag.check_every >= 1, "aggressive.check_every", ag.check_every, "must be at least 1",
           "use aggressive.check_every=15")
    pc = cfg.pictures
    _check(pc.traverse_steps > 0, "pictures.traverse_steps", pc.traverse_steps, "must be positive",
           "use e.g. pictures.traverse_steps=9")
    _check(pc.traverse_range > 0, "pictures.traverse_range", pc.traverse_range, "must be positive",
           "use e.g. pictures.traverse_range=2.5")
    _check(pc.max_dims > 0, "pictures.max_dims", pc.max_dims, "must be positive", "use e.g. pictures.max_dims=10")
    # dataset
    _check(d.image_size >= 4, "dataset.image_size", d.image_size, "must be at least 4 pixels", "use e.g. dataset.image_size=32")
    _check(d.channels in (1, 3), "dataset.channels", d.channels, "must be 1 (grayscale) or 3 (RGB)", "use dataset.channels=1 or 3")
    _check(d.name is not DatasetName.shapes or d.num_examples > d.val_size, "dataset.num_examples", d.num_examples,
           f"must exceed dataset.val_size={d.val_size} so that training examples remain",
           f"use e.g. dataset.num_examples={max(2 * d.val_size, 1000)} or lower dataset.val_size")
    _check(d.val_size >= 2, "dataset.val_size", d.val_size, "must be at least 2 (active units, the mutual "
           "information and the latent map compare examples with each other)", "use e.g. dataset.val_size=1000")
    _check(d.test_size > 0, "dataset.test_size", d.test_size, "must be positive", "use e.g. dataset.test_size=1000")
    if d.subset is not None:
        _check(d.subset > 0, "dataset.subset", d.subset, "must be positive", "use e.g. dataset.subset=1000, or dataset.subset=null")
    if d.name is DatasetName.image_folder:
        _check(bool(d.path), "dataset.path", d.path, "image_folder needs a folder of images",
               "pass dataset.path=/path/to/images")
    # model
    _check(m.latent_dim > 0, "model.latent_dim", m.latent_dim, "must be positive", "use e.g. model.latent_dim=10")
    _check(all(h > 0 for h in m.hidden), "model.hidden", list(m.hidden), "layer sizes must be positive", "use e.g. model.hidden=[512,256]")
    _check(len(m.channels) > 0 and all(c > 0 for c in m.channels), "model.channels", list(m.channels),
           "needs at least one positive channel count", "use e.g. model.channels=[32,64,64]")
    _check(m.kernel >= 2, "model.kernel", m.kernel, "stride-2 convolutions need a kernel of at least 2", "use model.kernel=4 or 3")
    _check(m.ar_layers >= 1, "model.ar_layers", m.ar_layers, "needs at least the first (mask A) layer",
           "use e.g. model.ar_layers=6")
    _check(m.ar_kernel >= 1 and m.ar_kernel % 2 == 1, "model.ar_kernel", m.ar_kernel, "must be odd",
           "use e.g. model.ar_kernel=5")
    _check(m.ar_width >= 1, "model.ar_width", m.ar_width, "must be positive", "use e.g. model.ar_width=64")
    _check(m.ar_cond_channels >= 1, "model.ar_cond_channels", m.ar_cond_channels, "must be positive",
           "use e.g. model.ar_cond_channels=32")
    # likelihood
    _check(lk.sigma > 0, "likelihood.sigma", lk.sigma, "σ must be positive", "use e.g. likelihood.sigma=0.1")
    _check(lk.mixtures >= 1, "likelihood.mixtures", lk.mixtures, "needs at least one component",
           "use e.g. likelihood.mixtures=5")
    _check(lk.min_log_sigma < lk.max_log_sigma, "likelihood.min_log_sigma", lk.min_log_sigma,
           f"must be below likelihood.max_log_sigma={lk.max_log_sigma}", "use e.g. likelihood.min_log_sigma=-6")
    # schedule
    _check(s.beta_start >= 0, "schedule.beta_start", s.beta_start, "must be >= 0", "use e.g. schedule.beta_start=0")
    _check(s.warmup_steps > 0, "schedule.warmup_steps", s.warmup_steps, "must be positive", "use e.g. schedule.warmup_steps=1000")
    _check(s.delay_steps >= 0, "schedule.delay_steps", s.delay_steps, "must be >= 0", "use schedule.delay_steps=0")
    _check(s.cycles > 0, "schedule.cycles", s.cycles, "must be positive", "use e.g. schedule.cycles=4")
    _check(0 < s.ratio <= 1, "schedule.ratio", s.ratio, "must be in (0, 1]", "use e.g. schedule.ratio=0.5")
    # optimizer
    _check(o.lr > 0, "optimizer.lr", o.lr, "the learning rate must be positive", "use e.g. optimizer.lr=1e-3")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "must be >= 0", "use e.g. optimizer.weight_decay=0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas", list(o.betas),
           "needs two values in [0, 1)", "use optimizer.betas=[0.9,0.999]")
    _check(o.eps > 0, "optimizer.eps", o.eps, "must be positive", "use e.g. optimizer.eps=1e-8")
    _check(o.momentum >= 0, "optimizer.momentum", o.momentum, "must be >= 0", "use e.g. optimizer.momentum=0.9")
    _check(o.grad_clip >= 0, "optimizer.grad_clip", o.grad_clip, "must be >= 0 (0 = off)", "use e.g. optimizer.grad_clip=1.0")
    _check(o.lr_stage_scale > 0, "optimizer.lr_stage_scale", o.lr_stage_scale, "must be positive",
           "use e.g. optimizer.lr_stage_scale=0.1")
    _check(o.lr_stage_growth > 0, "optimizer.lr_stage_growth", o.lr_stage_growth, "must be positive",
           "use 3 (the paper's stage lengths) or 1 (eight equal stages)")
    _check(o.ema == 0 or 0 < o.ema < 1, "optimizer.ema", o.ema, "must be 0 (off) or in (0, 1)",
           "use e.g. optimizer.ema=0.999 (an average over about the last 1,000 steps)")
    _check(o.lr_step_size > 0, "optimizer.lr_step_size", o.lr_step_size, "must be positive", "use e.g. optimizer.lr_step_size=2000")
    _check(0 < o.lr_gamma <= 1, "optimizer.lr_gamma", o.lr_gamma, "must be in (0, 1]", "use e.g. optimizer.lr_gamma=0.5")
    _check(o.lr_patience >= 0, "optimizer.lr_patience", o.lr_patience, "must be >= 0", "use e.g. optimizer.lr_patience=2")
    _check(o.lr_min >= 0, "optimizer.lr_min", o.lr_min, "must be >= 0", "use e.g. optimizer.lr_min=0")
