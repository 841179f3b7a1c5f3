"""Typed run configuration: one dataclass per params.yaml section.

The defaults here are the ``toy`` settings (the embedded default: the built-in
synthetic scenes and a small model that trains on 2 CPU cores in minutes).
Range and choice checks live in field metadata so that the loader can report
the key path and the offending value (see ``sdm.config.load``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any = None, *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with validation metadata (min, max, choices)."""
    if factory is not None:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


# The names of sdm.diffusion.SAMPLERS (a test keeps the two equal); here so that
# config validation does not import torch.
# "distilled": a guidance-distilled student's DDIM (sample.eta) on its grid, one pass per step (sdm.distill).
# "renoise": x_0 predicted, then noised afresh to the next level each step (any model; a student on its grid).
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp", "dpmpp-sde", "distilled", "renoise")


@dataclass
class SynthConfig:
    """The built-in synthetic scenes dataset (``sdm data synth``)."""

    n: int = _f(400, min=1)
    size: int = _f(64, min=16)
    seed: int = 0


@dataclass
class DataConfig:
    """Where the raw data lives, its format, and how it is prepared."""

    format: str = "folder"
    source: str = "data/raw/synthetic"
    prepared: str = "data/prepared/synthetic"
    # [H, W] of prepared images and of the model's input.
    image_size: list[int] = _f(factory=lambda: [32, 32], length=2, min_each=8)
    synth: SynthConfig = _f(factory=SynthConfig)
    # Formats without an official split get a reproducible one from these.
    val_fraction: float = _f(0.1, min=0.0, max=0.9)
    split_seed: int = 0
    on_error: str = _f("fail", choices=("fail", "skip"))
    shard_mb: int = _f(32, min=1)
    # Largest source image or label map accepted, in pixels (W x H read from the file header before decoding):
    # 64 Mpx (8192 x 8192) is above every paper dataset (Cityscapes 2 Mpx), 8K frames (33 Mpx) and 50 Mpx
    # camera photos, and bounds one decode at ~1.7 GB (RGB + int64 label maps); a decompression bomb is refused.
    max_image_pixels: int = _f(64 * 1024 * 1024, min=1)
    # Training augmentation (official recipe: random resized crop + flip).
    random_flip: bool = True
    random_crop: bool = True
    crop_scale: list[float] = _f(factory=lambda: [0.8, 1.0], length=2)
    loader_workers: int = _f(0, min=0)
    # Time limits of the DVC commands the pipeline runs, in seconds (0: no limit). Past one, DVC and its
    # subprocesses are killed and the step fails with a timeout error (retried by the flow like a network
    # error). dvc_timeout_s: the commands that talk to the remote (push, pull) and `dvc status`;
    # dvc_repro_timeout_s: `dvc repro`, the dataset's preparation, which talks to no remote and may
    # legitimately take hours on a large dataset.
    dvc_timeout_s: float = _f(600.0, min=0.0)
    dvc_repro_timeout_s: float = _f(0.0, min=0.0)


@dataclass
class ModelConfig:
    """The SPADE diffusion U-Net. Field names follow the official flags."""

    # [H, W]; must match data.image_size.
    image_size: list[int] = _f(factory=lambda: [32, 32], length=2, min_each=8)
    num_classes: int = _f(12, min=1)
    # Adds one channel of instance edges to the SPADE input.
    use_instance: bool = True
    in_channels: int = _f(3, min=1)
    model_channels: int = _f(32, min=8)
    num_res_blocks: int = _f(1, min=1)
    channel_mult: list[float] = _f(factory=lambda: [1.0, 2.0, 2.0])
    # Feature-map sizes (along the longer side) that get self-attention.
    attention_resolutions: list[int] = _f(factory=lambda: [8])
    num_heads: int = _f(2, min=1)
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = _f(0.0, min=0.0, max=1.0)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    learn_sigma: bool = True
    # Gradient checkpointing of every ResBlock / attention block: less activation memory, the forward
    # recomputed in backward.
    use_checkpoint: bool = False
    # The official flag, kept so official settings round-trip; the network's weights stay float32 and
    # mixed precision comes from train.precision (autocast), not from this flag.
    use_fp16: bool = False
    # Hidden channels of each SPADE norm's shared conv (128 in the paper).
    spade_hidden: int = _f(32, min=1)
    # A guidance-distilled student (sdm.distill): the classifier-free guidance scale w is an input, embedded
    # like the timestep and added to the time embedding, so one pass gives the guided output. False keeps the
    # network (and its state-dict keys) exactly the official one.
    guidance_embed: bool = False

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def cond_channels(self) -> int:
        """Channels of the SPADE input: one-hot classes (+1 instance edges)."""
        return self.num_classes + (1 if self.use_instance else 0)


@dataclass
class DiffusionConfig:
    """The forward process and the training loss."""

    steps: int = _f(1000, min=1)
    noise_schedule: str = _f("linear", choices=("linear", "cosine"))
    # Improved DDPM hybrid loss: L_simple + lambda_vlb * L_vlb, where L_vlb is
    # the sum over all T terms (so 0.001 * T = 1 per term at T = 1000).
    lambda_vlb: float = _f(0.001, min=0.0)


@dataclass
class SampleConfig:
    """Guided sampling defaults for ``sdm sample`` and training grids."""

    # The stochastic solver: at 25 steps it keeps DDPM-1000's semantic consistency where the deterministic
    # ones lose some (benchmarks/RESULTS.md, steps sweep).
    sampler: str = _f("dpmpp-sde", choices=SAMPLER_NAMES)
    steps: int = _f(25, min=1)
    guidance_scale: float = _f(1.5, min=0.0)
    eta: float = _f(0.0, min=0.0, max=1.0)
    seed: int = 0
    batch_size: int = _f(8, min=1)
    # Inference speed (sdm.precision, benchmarks/RESULTS.md): fp32 is the exact path; bf16 = autocast;
    # auto = bf16 where the device runs it natively (CUDA with bf16, a CPU with AVX512-BF16/AMX), else fp32.
    precision: str = _f("auto", choices=("auto", "fp32", "bf16"))
    # torch.compile of the U-Net forward (paid once per process and input shape) and channels-last layout;
    # auto = only where measured to pay: so far nowhere (sdm.compiled; give "true"/"false" as strings).
    compile: str = _f("auto", choices=("auto", "true", "false"))
    channels_last: str = _f("auto", choices=("auto", "true", "false"))
    # Upper bound of the SPADE cache per sampling call, in GB (1e9 bytes); 0 = unbounded. Past it the label
    # maps are sampled in smaller chunks, or uncached when one label map alone is over it (sdm.spade_budget).
    cache_budget_gb: float = _f(8.0, min=0.0)


@dataclass
class PhaseConfig:
    """One training phase (the paper's pretrain or finetune)."""

    steps: int = _f(1000, min=0)
    lr: float = _f(1e-4, min=0.0)
    drop_rate: float = _f(0.0, min=0.0, max=1.0)
    warmup_steps: int = _f(0, min=0)
    lr_schedule: str = _f("constant", choices=("constant", "cosine"))


@dataclass
class TrainConfig:
    """Ray-dispatched distributed training."""

    phases: list[str] = _f(factory=lambda: ["pretrain", "finetune"], subset_of=("pretrain", "finetune"))
    pretrain: PhaseConfig = _f(factory=lambda: PhaseConfig(steps=900, lr=2e-4, drop_rate=0.0))
    finetune: PhaseConfig = _f(factory=lambda: PhaseConfig(steps=200, lr=1e-4, drop_rate=0.2))
    # Global batch, split evenly over workers.
    batch_size: int = _f(8, min=1)
    workers: int = _f(2, min=1)
    use_gpu: bool = False
    cpus_per_worker: int = _f(1, min=1)
    # bf16 autocast around the loss (weights, gradients, AdamW and EMA stay fp32); fp32 = no autocast;
    # auto = bf16 where the device runs it natively (sdm.precision.bf16_native: CUDA with bf16, a CPU with
    # AVX512-BF16/AMX), else fp32 (bf16 emulated in software is slower: benchmarks/RESULTS.md).
    precision: str = _f("auto", choices=("auto", "fp32", "bf16"))
    ema_rate: float = _f(0.999, min=0.0, max=1.0)
    # Warm the EMA decay up as min(ema_rate, (1 + n) / (10 + n)) after n updates, so a short
    # run's EMA is not dominated by the random initialisation (off = the official fixed rate).
    ema_warmup: bool = True
    grad_clip: float = _f(1.0, min=0.0)
    weight_decay: float = _f(0.0, min=0.0)
    seed: int = 0
    checkpoint_every: int = _f(250, min=1)
    keep_checkpoints: int = _f(2, min=1)
    log_every: int = _f(50, min=1)
    sample_every: int = _f(1000, min=1)
    max_failures: int = _f(2, min=0)
    storage_path: str = "runs"


@dataclass
class SegmenterConfig:
    """The compact evaluation segmenter (for mIoU, FSD, feature diversity)."""

    steps: int = _f(300, min=1)
    lr: float = _f(2e-3, min=0.0)
    batch_size: int = _f(16, min=1)
    width: int = _f(32, min=4)
    path: str = ""


@dataclass
class EvaluateConfig:
    """Classifier-free guided evaluation of a checkpoint."""

    split: str = "val"
    guidance_scales: list[float] = _f(factory=lambda: [1.0, 1.5])
    sampler: str = _f("dpmpp-sde", choices=SAMPLER_NAMES)  # as SampleConfig.sampler
    steps: int = _f(25, min=1)
    eta: float = _f(0.0, min=0.0, max=1.0)  # as SampleConfig.eta (ddim and distilled); a student's own by default
    num_samples: int = _f(0, min=0)  # 0 = the whole split
    repeats: int = _f(2, min=1)
    batch_size: int = _f(16, min=1)
    seed: int = 0
    # "sampler:steps" pairs for the steps sweep.
    steps_sweep: list[str] = _f(
        factory=lambda: ["ddpm:1000", "ddim:50", "dpmpp:25", "dpmpp:15", "dpmpp-sde:25", "dpmpp-sde:15", "renoise:25",
                         "renoise:8"]
    )
    inception_weights: str = ""
    lpips_weights: str = ""
    # FID only from this many images on (the paper's val splits: Cityscapes 500, ADE20K 2000); below, skipped.
    min_fid_samples: int = _f(500, min=2)
    # KID (unbiased at any size; its spread over subsets says how far to trust it): from this many real
    # images on, over kid_subsets random subsets of min(kid_subset_size, half the smaller set) images each.
    min_kid_samples: int = _f(32, min=4)
    kid_subsets: int = _f(100, min=1)
    kid_subset_size: int = _f(1000, min=2)
    # How images reach the Inception's 299 pixels: short_side (aspect kept: a 256x512 frame -> 299x598) or
    # square (pytorch-fid: squashed to 299x299). The same for square images.
    fid_resize: str = _f("short_side", choices=("short_side", "square"))
    segmenter: SegmenterConfig = _f(factory=SegmenterConfig)
    # Sampling spread over this many Ray workers (1: in the evaluating process); the images and metrics are the
    # same for any number. use_gpu: one GPU per worker.
    workers: int = _f(1, min=1)
    use_gpu: bool = False


@dataclass
class PromotionConfig:
    """The rule that moves the champion alias (mlflow/README.md: Promotion).

    Both models are evaluated on the same data and settings; the challenger is
    promoted when ``metric`` improves by more than ``min_improvement`` and no guard
    metric worsens by more than its stated fraction.
    """

    # "auto": metrics.json's primary_metric, then FID, then KID (when computed), then FSD, at
    # sample.guidance_scale; else a key ("fsd@1.5") or a name ("fsd", at sample.guidance_scale).
    # The direction follows the metric: lower is better for distances (FID, FSD), higher for mIoU.
    metric: str = "auto"
    # The relative gain over the champion required (0.02: 2% better); 0: strictly better.
    min_improvement: float = _f(0.0, min=0.0)
    # metric (key or name) -> the largest relative worsening allowed (miou: 0.05 = at most 5% lower).
    guards: dict[str, float] = _f(factory=dict)


@dataclass
class ServingConfig:
    """Request limits of the registered model (``mlflow models serve``; mlflow/README.md: Request limits).

    Stored in the model version (MLflow ``model_config``) at registration; a request over a limit is
    answered with HTTP 400 naming it.
    """

    # Label maps (rows) per request: each is one full sampling run, so this bounds a request's time and memory.
    max_rows: int = _f(16, min=1)
    # Sampling steps per request (also never above the model's diffusion.steps).
    max_steps: int = _f(1000, min=1)
    # The guidance scale range accepted (the paper samples at 1.5; far above ~10 images saturate).
    min_guidance_scale: float = _f(0.0, min=0.0)
    max_guidance_scale: float = _f(10.0, min=0.0)
    # "distilled" only for a distilled student (sdm.distill.student_config adds it): other models refuse it.
    samplers: list[str] = _f(factory=lambda: [s for s in SAMPLER_NAMES if s != "distilled"], subset_of=SAMPLER_NAMES)


@dataclass
class RegisterConfig:
    """MLflow registration and promotion."""

    model_name: str = "sdm-toy"
    alias: str = "candidate"
    champion_alias: str = "champion"
    promote: bool = True
    promotion: PromotionConfig = _f(factory=PromotionConfig)
    tracking_uri: str = ""
    serving: ServingConfig = _f(factory=ServingConfig)


@dataclass
class RetrainConfig:
    """What the scheduled ``retrain`` flow trains when the fingerprint changed (README: Scheduled retraining)."""

    # scratch: both phases from random weights; continue: the champion's weights + EMA, then
    # continue_steps finetune steps; auto: continue when the champion's model and diffusion
    # config equal these, scratch when they differ (or there is no champion).
    mode: str = _f("auto", choices=("auto", "scratch", "continue"))
    continue_steps: int = _f(100, min=1)


@dataclass
class DistillConfig:
    """Guided distillation (``sdm distill``; README: Few-step sampling).

    Meng et al. 2023: stage one teaches a student that takes the guidance scale as input the teacher's
    guided output in one pass; stage two halves its DDIM steps from ``start_steps`` down to ``steps``
    (progressive distillation). ``start_steps`` must be ``steps * 2**r`` (checked by ``sdm distill``).
    """

    steps: int = _f(8, choices=(1, 2, 4, 8, 16))  # K: the student's sampling steps
    start_steps: int = _f(64, min=2)  # stage two halves from this teacher grid down to K
    guidance_range: list[float] = _f(factory=lambda: [1.0, 2.0], length=2)  # [w_min, w_max], drawn uniformly
    guidance_train_steps: int = _f(400, min=1)  # stage one's training steps
    halving_train_steps: int = _f(300, min=1)  # training steps of each halving round
    lr: float = _f(1e-4, min=0.0)
    model_name: str = ""  # the student's registered name; "" = <register.model_name>-distilled
    in_retrain: bool = False  # the retrain flow distils the new champion after a promotion
    # Set by `sdm distill` in each stage run's config (not user settings):
    stage: str = _f("", choices=("", "guidance", "halve"))
    teacher: str = ""  # absolute checkpoint dir of this stage's teacher
    teacher_steps: int = _f(0, min=0)  # halve: the teacher's grid size (the student's is half)


@dataclass
class Config:
    """The whole resolved configuration (all params.yaml sections)."""

    data: DataConfig = _f(factory=DataConfig)
    model: ModelConfig = _f(factory=ModelConfig)
    diffusion: DiffusionConfig = _f(factory=DiffusionConfig)
    train: TrainConfig = _f(factory=TrainConfig)
    sample: SampleConfig = _f(factory=SampleConfig)
    evaluate: EvaluateConfig = _f(factory=EvaluateConfig)
    register: RegisterConfig = _f(factory=RegisterConfig)
    retrain: RetrainConfig = _f(factory=RetrainConfig)
    distill: DistillConfig = _f(factory=DistillConfig)
    # The preset this config started from (informational).
    preset: str = ""
