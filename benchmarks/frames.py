r"""How deep adamlab's own call stack is when `adamlab train --config digits` traces its step.

The train step function (`steps.make_train_step`'s) is wrapped so that, the first time jax traces
it, it records the Python stack: every frame, and the frames of adamlab's own files (from
`adamlab.cli.main` down to the step), in order. A shallow stack is a loop a reader can follow
from the command line to the step; every adamlab frame is one more function to read.

    python benchmarks/frames.py --out benchmarks/results/frames.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import tempfile

import jax

from adamlab import cli
from adamlab.training import steps

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adamlab"


def _own(frame: inspect.FrameInfo) -> bool:
    return pathlib.Path(frame.filename).resolve().is_relative_to(PACKAGE)


def traced_stack(argv: list[str]) -> list[inspect.FrameInfo]:
    """The stack (outermost first) when the train step is first traced by `cli.main(argv)`."""
    stacks: list[list[inspect.FrameInfo]] = []
    make_train_step = steps.make_train_step

    def recording(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def train_step(state, batch):
            if not stacks:
                stacks.append(inspect.stack()[1:][::-1])  # Without this frame.
            return step(state, batch)

        return train_step

    steps.make_train_step = recording
    try:
        code = cli.main(argv)
    finally:
        steps.make_train_step = make_train_step
    if code != 0 or not stacks:
        raise SystemExit(f"`{' '.join(argv)}` exited with {code} or never traced its step")
    return stacks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--num_steps", type=int, default=21)  # After the 20 warmup steps.
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        argv = ["adamlab", "train", "--config", "digits", "--workdir", workdir]
        argv += [f"--config.train.num_steps={args.num_steps}"]
        stack = traced_stack(argv)
    own = [f for f in stack if _own(f)]
    result = {
        "command": "adamlab train --config digits",
        "adamlab_frames": len(own),
        "all_frames": len(stack),
        "adamlab_stack": [
            f"{pathlib.Path(f.filename).resolve().relative_to(ROOT)}:{f.function}" for f in own
        ],
        "jax": jax.__version__,
    }
    text = json.dumps(result, indent=1) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
