r"""Default experiment: a small CNN with our Adam on scikit-learn's 8x8 `digits` (offline).

Run it:

    adamlab train --config configs/digits.py --workdir runs/digits

Expected: ~98.6% test accuracy (>= 97%) in ~10-20 s on a 2-core CPU, start-up and compilation
included. Measured (2-core AMD EPYC, jax 0.10.2, CPU, the `adamlab` command with its Eigen
convolutions): test accuracy 0.986 / 0.992 / 0.986 / 0.983 / 0.992 for seeds 0-4 (mean 0.988;
360 test images, so one image is 0.28%; with XLA's YNNPACK convolutions seed 3 gave 0.986);
9.6-10.2 s for the whole command (21.5 s earlier on a 2-core Intel Xeon). Tuning (seed 0, on the
144 validation images only): learning rate {1e-3, 3e-3, 1e-2} x epochs {6, 12, 24}, plus 3e-2 x
24; the best was 1e-2 x 24 (validation accuracy 0.993, loss 0.012).

Override any field from the command line, e.g.

    adamlab train --config configs/digits.py --config.optimizer.name=adamw \
        --config.optimizer.weight_decay=1e-4 --config.train.num_epochs=10

Every other config in this directory starts from `get_config()` here (loaded by path with
`adamlab.config_dict.load_config_file`) and overrides only what changes, so this file documents
every field.
"""

import ml_collections
from ml_collections import config_dict

from adamlab.optim import registry

# Measured on this config (2-core AMD EPYC CPU, jax 0.10.2, seeds 0-4): see the docstring.
RESULT = "test accuracy 0.988 mean over seeds 0-4 (min 0.983)"


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config: CNN + Adam on digits."""
    config = ml_collections.ConfigDict()
    # The one seed: parameter init, data order and dropout (folded with the step inside the step).
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "digits"  # One of adamlab.data.DATASETS.
    data.data_dir = config_dict.placeholder(str)  # TFDS data dir; None = TFDS default.
    data.download = False  # digits ships with scikit-learn: nothing to download.
    data.validation_fraction = 0.1  # Held out of the training split for model selection.
    # Augmentation on/off; None = the dataset's default (digits and MNISTs: none).
    data.augment = config_dict.placeholder(bool)
    data.shuffle_buffer = 10_000  # Larger than the dataset: a full shuffle every epoch.
    data.classes = config_dict.placeholder(tuple)  # None = all classes; or a subset, e.g. (3, 8).

    config.model = model = ml_collections.ConfigDict()
    # "cnn" (small grey images), "resnet" (CIFAR-10), "mlp" or "logreg" (Kingma & Ba 2015).
    # Fields of the other models are ignored: --config.model.name=mlp works on this config.
    model.name = "cnn"
    model.dtype = "float32"  # Computation dtype, "float32" or "bfloat16"; params stay float32.
    model.features = (32, 64)  # Channels of the conv blocks.
    model.dense_features = 128  # Width of the hidden dense layer.
    model.dropout_rate = 0.0  # Dropout before the classifier (mlp: after each layer); 0: none.
    model.hidden = (1000, 1000)  # mlp only: widths of the hidden ReLU layers.
    model.activation = "relu"  # mlp only: "relu", "tanh", "elu" or "gelu" (Cohen et al.: tanh).

    config.optimizer = opt = ml_collections.ConfigDict()
    # Ours: adamlab.optim.names(); or a baseline from optax (not ours): sgd, adagrad, rmsprop,
    # which need implementation="optax".
    opt.name = "adam"
    opt.implementation = "ours"  # "ours" (adamlab.optim.create) or "optax" (the optax twin).
    # Whose numerics ours follow: "optax", "pytorch" or "paper" (docs/conventions.md).
    opt.convention = "optax"
    # Ours only: the fused variant (`fused=True` of adamlab.optim: the bias corrections as
    # scalar multiplications; same state, numbers within float32 rounding). Off by default: see the
    # README's "Benchmarks" (benchmarks/vs_pytorch.py) for where it wins and where it does not.
    opt.fused = False
    opt.learning_rate = 1e-2  # Peak learning rate (tuned on validation: 1e-3..3e-2).
    # "constant", "warmup_cosine" (linear warmup, cosine to 0), "inverse_sqrt" (lr / sqrt(t)) or
    # "warmup_constant" (linear warmup, then constant: Schedule-Free's).
    opt.schedule = "warmup_cosine"
    opt.warmup_steps = 20  # Linear warmup length, in steps.
    # Or the warmup as a fraction of the run's steps (sweepable; needs warmup_steps=0); None: off.
    opt.warmup_fraction = config_dict.placeholder(float)
    # The optimizer's own defaults are used for the fields left at None.
    opt.b1 = config_dict.placeholder(float)  # First-moment decay (Adam: 0.9).
    opt.b2 = config_dict.placeholder(float)  # Second-moment decay (Adam: 0.999).
    opt.eps = config_dict.placeholder(float)  # Denominator epsilon, outside the sqrt (1e-8).
    opt.weight_decay = config_dict.placeholder(float)  # Decoupled decay (adamw/nadamw only).
    # Storage dtype of Adam's first moment: None (= the parameters' float32) or "bfloat16"
    # (mixed precision: 2 bytes less per parameter; see docs/scaling.md). Adam-type only.
    opt.mu_dtype = config_dict.placeholder(str)
    # Storage dtype of the second moment (v_t; AMSGrad's max, Adamax's u_t, AdaBelief's s_t):
    # None or "bfloat16" (2 bytes less per parameter). optax's mu_dtype alone keeps it float32.
    opt.nu_dtype = config_dict.placeholder(str)
    opt.momentum = config_dict.placeholder(float)  # sgd, rmsprop: momentum (None: none).
    opt.nesterov = config_dict.placeholder(bool)  # sgd, rmsprop: Nesterov momentum.
    # L2 penalty (l2 / 2) * ||params||^2 in the loss, for any optimizer (Adam + L2, as opposed
    # to AdamW's decoupled weight_decay); None or 0: none.
    opt.l2 = config_dict.placeholder(float)
    # Parameter groups (PyTorch's param groups; docs/training.md): dicts {"params": regex of
    # parameter paths such as "Dense_1/kernel" (re.search), <field of this section>: value},
    # each overriding these fields for the parameters it matches; the others use this section.
    # A regex matching nothing, or two matching one parameter, is an error. From the command
    # line: --config.optimizer.groups='({"params": "bias", "weight_decay": 0.0},)'.
    opt.groups = ()
    # Every other optimizer's hyperparameters (adamlab.optim.registry.config_fields: AdEMAMix's
    # b3, alpha and their warmups in steps, ADOPT's use_clipping, Muon's ns_steps, ...), None:
    # that optimizer's default (its docstring says what each does).
    for field, kind in registry.config_fields().items():
        if field not in opt:
            opt[field] = config_dict.placeholder(kind)

    config.train = train = ml_collections.ConfigDict()
    train.engine = "jit"  # "jit" (jax.jit + NamedSharding) or "pmap"; both use all local devices.
    # ZeRO-1: shard the optimizer state over the devices (1/N of it per device) instead of
    # replicating it; same results up to float32 rounding. See adamlab/training/zero.py.
    train.shard_optimizer = False
    train.batch_size = 64  # Global batch size, split over the devices.
    train.num_epochs = 24.0  # Training length in epochs of the training split (may be fractional).
    train.num_steps = config_dict.placeholder(int)  # If set, overrides num_epochs.
    train.eval_batch_size = 256  # Evaluation batch (padded at the end; padding is masked).
    train.log_every_steps = 20  # Train metrics to metrics.jsonl/TensorBoard every this many steps.
    train.eval_every_steps = 100  # Validation every this many steps (and at every checkpoint).
    train.checkpoint_every_steps = 100  # Save every this many steps, and always at the end.
    train.keep_checkpoints = 3  # Keep the last this many checkpoints (plus the best).
    # Picks the best checkpoint (kept beside the last ones): validation_{accuracy,loss,f1,...}.
    train.best_metric = "validation_accuracy"
    train.progress_bar = True  # tqdm bar with steps/s and ETA; shown only on a terminal.
    # Steps per compiled call (a lax.scan over that many batches, ending at every log, eval and
    # checkpoint point). None: 1 for a single run on CPU (XLA:CPU runs convolutions slowly in
    # loops, jax-ml/jax#12868), else up to 100. Numbers are the same either way.
    train.steps_per_dispatch = config_dict.placeholder(int)
    # (first, last): write a jax.profiler trace of these steps to <workdir>/profile
    # (open it with TensorBoard's profile plugin or Perfetto); None: no trace.
    train.profile_steps = config_dict.placeholder(tuple)
    # Testing only: replace the batch of this step with NaNs to exercise the non-finite stop.
    train.inject_nan_at_step = config_dict.placeholder(int)
    # "cross_entropy" or "mse" (0.5 * ||logits - one_hot||^2, Cohen et al. 2021's squared loss).
    train.loss = "cross_entropy"

    # Several members in one compiled program (adamlab compare/sweep/study fill these in): each
    # seed x each swept value x each implementation is one run, with its own metrics under
    # <workdir>/members/. Defaults: one run, config.seed, optimizer.implementation.
    config.runs = runs = ml_collections.ConfigDict()
    runs.seeds = config_dict.placeholder(tuple)  # e.g. (0, 1, 2); None: (config.seed,).
    runs.implementations = config_dict.placeholder(tuple)  # e.g. ("ours", "optax").
    runs.sweep = ml_collections.ConfigDict()  # optimizer field -> values, e.g. learning_rate.

    # Start from another run's parameters (transfer learning; adamlab/training/transfer.py).
    config.init = init = ml_collections.ConfigDict()
    init.workdir = config_dict.placeholder(str)  # The pretrained run; None: train from scratch.
    init.checkpoint = "best"  # "latest", "best" or a step of that run.
    init.dont_load = ()  # Regexes of parameter paths re-initialised (e.g. the head).
    init.frozen = ()  # Regexes of parameter paths that get zero updates.

    # Multi-host (adamlab/training/distributed.py, docs/scaling.md): one process per host, all
    # started with the same config. Fields left at None come from JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID or JAX's cluster auto-detection (SLURM, TPU pods, MPI).
    config.distributed = dist = ml_collections.ConfigDict()
    dist.enabled = False  # True: call jax.distributed.initialize before training.
    dist.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0.
    dist.num_processes = config_dict.placeholder(int)  # Number of processes in the run.
    dist.process_id = config_dict.placeholder(int)  # This process's index, 0..num_processes-1.

    # Looking inside the optimizer (adamlab/diagnostics; `adamlab diagnostics --workdir DIR`
    # draws the figures). Off by default; the plain step is unchanged when off.
    config.diagnostics = diag = ml_collections.ConfigDict()
    # Per-layer statistics (norms, update/param ratio; Adam family: effective-step quantiles,
    # eps fraction, RAdam's rho_t, AMSGrad's active maximum) every this many steps, computed
    # inside the step that ends there; None: off.
    diag.layer_stats_every_steps = config_dict.placeholder(int)
    # Hessian top eigenvalues (Lanczos) on a fixed batch every this many steps; None: off.
    diag.curvature_every_steps = config_dict.placeholder(int)
    # The fixed batch: the first this many examples of the training split, in order (all of
    # them if fewer: full-batch training uses the whole split).
    diag.curvature_examples = 1024
    diag.top_k = 1  # How many of the top Hessian eigenvalues to log (sharpness = the first).
    diag.lanczos_steps = 20  # Lanczos iterations per eigenvalue estimate (>= top_k).
    # Adam family: also the top eigenvalue of P^-1 H, P = diag(sqrt(v_hat) + eps) (Cohen et al.
    # 2022's preconditioned sharpness, v_hat bias-corrected at the optimizer's count).
    diag.preconditioned = True
    # Spectral density by stochastic Lanczos quadrature: random probes per estimate (0: none),
    # written to curvature.jsonl beside metrics.jsonl.
    diag.density_probes = 0
    diag.density_steps = 30  # Lanczos iterations per density probe.
    return config
