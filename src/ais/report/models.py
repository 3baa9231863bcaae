"""Another model's results beside the default's: run the whole pipeline on it as a DVC experiment (in
a temporary copy of the repository, DVC's own machinery; the weights and the corpus come from the
cache outside the workspace), then keep that run's reports in reports/models/<source>/, which the
`report` stage reads for its comparison across model size.

    python -m ais.report.models qwen2.5-coder-0.5b [-S key=value ...]

The copy's reports are taken from the experiment's own commit (`git archive`), so what lands in
reports/models/ is exactly what the pipeline wrote; then `dvc repro report` updates the page."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from ais.files import atomic_dir

REPORTS, MODELS = "reports", "reports/models"


def experiment_ref(name: str) -> str:
    """The git ref of the DVC experiment called `name` (the newest if several baselines have one)."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=-creatordate", "--format=%(refname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if not found:
        raise ValueError(f"no DVC experiment named {name!r} (refs/exps); run it first")
    return found[0]


def keep_reports(ref: str, source: str, root: Path = Path(".")) -> Path:
    """Write the experiment's reports/ (without reports/models/) into reports/models/<source>/, atomically."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, REPORTS], capture_output=True, check=True,
                             cwd=root).stdout
    target = root / MODELS / source
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar, atomic_dir(target) as tmp:
        for member in tar.getmembers():
            relative = Path(member.name).relative_to(REPORTS)
            if not member.isfile() or relative.parts[0] == "models":
                continue
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(tar.extractfile(member).read())
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ais.report.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a model.source (e.g. qwen2.5-coder-0.5b)")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="more params for the run (key=value)")
    args = parser.parse_args(argv)
    name = "model-" + args.source.replace("/", "-").replace(".", "_")
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-f", "-n", name, "-S", f"model.source={args.source}"]
    for value in args.set_param:
        command += ["-S", value]
    print("+ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    target = keep_reports(experiment_ref(name), args.source)
    print(f"{args.source}: the run's reports are in {target}; `dvc repro report` adds them to reports/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
