"""Transfer learning: pretrain the CNN, save it with orbax, restore its backbone, train a new head.

    python experiments/transfer.py --report_dir reports/transfer

The steps, each a small function:

1. `pretrain`: train the model on the source task (digits classes 0-4 by default, via
   `data.classes`) and save its final state with `adamlab.checkpoint.Checkpointer` (orbax).
2. `restore_params`: read the pretrained parameters back from the checkpoint.
3. `transfer_params`: a fresh model for the target task (its own number of classes) whose
   backbone is the pretrained one and whose head (`head_name`, the last Dense layer) is newly
   initialised.
4. `finetune_tx`: our Adam for the trainable parameters; in "frozen" mode the backbone gets
   `optax.set_to_zero()` through `optax.multi_transform`, so its updates are exactly zero, its
   parameters stay bitwise equal and it carries no optimizer state.

`transfer_study` compares three modes on the target task (classes 5-9 by default): "frozen"
(train only the new head on the pretrained features), "full" (fine-tune everything from the
pretrained weights) and "scratch" (the same model trained from a random initialisation).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from typing import Any

import jax
import ml_collections
import optax

from adamlab import baselines, data, optim
from adamlab.experiments import study_report
from adamlab.training.checkpoint import Checkpointer
from adamlab.training.study_run import RunResult, fit
from adamlab.training.train_state import create_train_state

MODES: tuple[str, ...] = ("frozen", "full", "scratch")
_DENSE = re.compile(r"Dense_(\d+)$")


def head_name(params: dict[str, Any]) -> str:
    """The classifier's parameter key: the top-level `Dense_<i>` with the largest `i`.

    Flax names submodules of a compact module in creation order, and the CNN, ResNet, MLP and
    logistic regression all create their classifier last.
    """
    dense = [(int(m.group(1)), k) for k in params if (m := _DENSE.match(k))]
    if not dense:
        raise ValueError(f"no Dense layer among the top-level parameters {sorted(params)}")
    return max(dense)[1]


def pretrain(
    config: ml_collections.ConfigDict, checkpoint_dir: str | pathlib.Path
) -> tuple[Any, RunResult]:
    """Trains on `config.pretrain_data` and saves the final state in `checkpoint_dir`.

    Reuses a pretraining found there if its settings (`pretraining_settings`, saved with it)
    are this config's, so the three fine-tuning modes, and reruns of the study, start from one
    pretrained network.

    Returns:
      (pretrained params, the pretraining RunResult or None if it was reused).

    Raises:
      ValueError: `checkpoint_dir` holds a pretraining with other settings (it is kept: use
        another directory, or delete it to pretrain again).
    """
    settings = pretraining_settings(config)
    with Checkpointer(checkpoint_dir, max_to_keep=1) as checkpointer:
        if checkpointer.latest_step() is not None:
            saved = checkpointer.restore_extra().get("pretraining")
            if saved != settings:
                differ = sorted(k for k in settings if (saved or {}).get(k) != settings[k])
                raise ValueError(
                    f"{checkpoint_dir} holds a pretraining with other settings ({', '.join(differ)}"
                    " differ); use another report directory, or delete it to pretrain again"
                )
            logging.info("reusing the pretrained network in %s", checkpoint_dir)
            return restore_params(config, checkpoint_dir), None
        info = data.dataset_info(config.pretrain_data)
        model = baselines.create_model(config.model, info.num_classes)
        schedule = _schedule(config, info, config.pretrain_learning_rate, config.pretrain_epochs)
        result = fit(
            data_config=config.pretrain_data,
            model=model,
            tx=optim.adam(schedule),
            schedule=schedule,
            batch_size=config.batch_size,
            num_epochs=config.pretrain_epochs,
            seed=config.pretrain_seed,
        )
        steps = int(result.metrics["steps"])
        checkpointer.save(
            steps, {"params": result.params}, extra={"pretraining": settings}, force=True
        )
    return result.params, result


def pretraining_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What decides the pretrained network (JSON values): reused only if these are equal."""
    fields = ("pretrain_data", "model", "pretrain_learning_rate", "pretrain_epochs",
              "pretrain_seed", "batch_size", "schedule", "warmup_fraction")  # fmt: skip
    as_json = lambda v: v.to_dict() if hasattr(v, "to_dict") else v
    return json.loads(json.dumps({k: as_json(config[k]) for k in fields}))


def restore_params(config: ml_collections.ConfigDict, checkpoint_dir: str | pathlib.Path) -> Any:
    """The pretrained parameters saved by `pretrain`, restored with orbax onto the host device."""
    info = data.dataset_info(config.pretrain_data)
    model = baselines.create_model(config.model, info.num_classes)
    target = jax.eval_shape(
        lambda: {"params": create_train_state(0, model, optax.identity(), info.image_shape).params}
    )
    with Checkpointer(checkpoint_dir, max_to_keep=1) as checkpointer:
        state, _ = checkpointer.restore(target)
    return state["params"]


def transfer_params(pretrained: Any, model: Any, image_shape, seed: int) -> Any:
    """`model`'s parameters with the pretrained backbone and a freshly initialised head.

    Raises:
      ValueError: if a backbone layer's shape differs (e.g. a different architecture).
    """
    fresh = create_train_state(seed, model, optax.identity(), image_shape).params
    head = head_name(fresh)
    if set(fresh) != set(pretrained):
        raise ValueError(
            f"pretrained layers {sorted(pretrained)} differ from the model's {sorted(fresh)}"
        )
    params = {}
    for name, layer in fresh.items():
        if name == head:
            params[name] = layer
            continue
        shapes = jax.tree.map(lambda x: x.shape, (layer, pretrained[name]))
        if shapes[0] != shapes[1]:
            raise ValueError(f"layer {name}: model shapes {shapes[0]} != pretrained {shapes[1]}")
        params[name] = jax.tree.map(lambda x: x.copy(), pretrained[name])
    return params


def finetune_tx(
    learning_rate: Any, params: Any, mode: str, **adam_hparams: Any
) -> optax.GradientTransformation:
    """Our Adam on the trainable parameters; "frozen" zeroes every update but the head's.

    `params` (their structure names the head) matters only for "frozen"; None is fine otherwise.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    adam = optim.adam(learning_rate, **adam_hparams)
    if mode != "frozen":
        return adam
    head = head_name(params)
    labels = {k: jax.tree.map(lambda _, k=k: "train" if k == head else "frozen", v)
              for k, v in params.items()}  # fmt: skip
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def _schedule(config, info, learning_rate: float, epochs: int) -> optax.Schedule:
    steps = data.steps_per_epoch(info, config.batch_size) * epochs
    warmup = round(config.warmup_fraction * steps) if config.schedule == "warmup_cosine" else 0
    return baselines.make_schedule(config.schedule, learning_rate, steps, warmup)


def finetune(config: ml_collections.ConfigDict, pretrained: Any, mode: str, seed: int) -> RunResult:
    """Trains on `config.data` (the target task) in `mode` ("frozen", "full" or "scratch")."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    info = data.dataset_info(config.data)
    model = baselines.create_model(config.model, info.num_classes)
    params = None
    if mode != "scratch":
        params = transfer_params(pretrained, model, info.image_shape, seed)
    lr = config.learning_rates[mode]
    schedule = _schedule(config, info, lr, config.num_epochs)
    return fit(
        data_config=config.data,
        model=model,
        tx=finetune_tx(schedule, params, mode),  # params: None from scratch (no mask needed).
        schedule=schedule,
        batch_size=config.batch_size,
        num_epochs=config.num_epochs,
        seed=seed,
        params=params,
    )


def transfer_study(config: ml_collections.ConfigDict, report_dir) -> list[dict]:
    """Pretrains once, then fine-tunes in every mode of `config.modes` with every seed."""
    report_dir = pathlib.Path(report_dir)
    for mode in config.modes:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    pretrained, source = pretrain(config, report_dir.absolute() / "pretrain_checkpoint")
    if source is not None:
        logging.info("pretraining: %s", source.metrics)
    rows = study_report.run_grid(
        [{"mode": m} for m in config.modes],
        tuple(config.seeds),
        lambda s, seed: finetune(config, pretrained, s["mode"], seed),
        desc="transfer",
    )
    pre = (
        "reused from its checkpoint"
        if source is None
        else f"test accuracy {source.metrics['test_accuracy']:.4f} on those classes"
    )
    summary = study_report.write_report(
        report_dir,
        config=config,
        rows=rows,
        by=("mode",),
        metrics={
            "final_train_loss": "final train loss",
            "test_accuracy": "test accuracy",
            "test_loss": "test loss",
        },
        title="Transfer learning: frozen backbone vs full fine-tune vs from scratch",
        notes=(
            f"Pretrained on {config.pretrain_data.name} classes {config.pretrain_data.classes} "
            f"for {config.pretrain_epochs} epochs ({pre}); target "
            f"{config.data.name} classes {config.data.classes}, {config.num_epochs} epochs, "
            f"learning rates {dict(config.learning_rates)}."
        ),
    )
    study_report.plot_epoch_curves(
        report_dir / "training_loss.png",
        {"target task": study_report.epoch_curves(rows, ("mode",))},
        title="transfer learning",
    )
    return summary
