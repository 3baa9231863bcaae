"""Another model's results beside the default's: run the whole pipeline on it as a DVC experiment (in
a temporary copy of the repository, DVC's own machinery; the weights and the corpus come from the
cache outside the workspace), then keep that run's reports in reports/models/<source>/, which the
`report` stage reads for its comparison across model size.

    python -m ais.report.models qwen2.5-coder-0.5b [-S key=value ...]
    python -m ais.report.models qwen2.5-coder-0.5b --keep-only     # keep an experiment already run

The copy's reports and params.yaml are taken from the experiment's own commit (`git archive`), so
what lands in reports/models/ is exactly what the pipeline wrote and ran with; then `dvc repro report` updates the page."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from ais.files import atomic_dir

REPORTS, MODELS, PARAMS = "reports", "reports/models", "params.yaml"


def experiment_ref(name: str) -> str:
    """The git ref of the DVC experiment called `name` (the newest if several baselines have one)."""
    refs = subprocess.run(["git", "for-each-ref", "--sort=-creatordate", "--format=%(refname)", "refs/exps"],
                          capture_output=True, text=True, check=True).stdout.split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if not found:
        raise ValueError(f"no DVC experiment named {name!r} (refs/exps); run it first")
    return found[0]


def declared_outputs(ref: str, root: Path = Path(".")) -> set[str]:
    """The paths the commit's dvc.yaml names as a stage's outs, metrics or plots."""
    stages = yaml.safe_load(subprocess.run(["git", "show", f"{ref}:dvc.yaml"], capture_output=True, text=True,
                                           check=True, cwd=root).stdout)["stages"]
    return {next(iter(o)) if isinstance(o, dict) else o
            for stage in stages.values() for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])}


def keep_reports(ref: str, source: str, root: Path = Path(".")) -> Path:
    """Write the experiment's reports that its stages wrote (the outputs its dvc.yaml declares under
    reports/, never reports/models/ or a file committed by hand) and the params.yaml it ran with into
    reports/models/<source>/, atomically (the `report` stage summarises them with its own code)."""
    declared = declared_outputs(ref, root)
    archive = subprocess.run(["git", "archive", "--format=tar", ref, REPORTS, PARAMS], capture_output=True, check=True,
                             cwd=root).stdout
    target = root / MODELS / source
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar, atomic_dir(target) as tmp:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            relative = Path(member.name) if member.name == PARAMS else Path(member.name).relative_to(REPORTS)
            if relative.parts[0] == "models" or (member.name != PARAMS and member.name not in declared):
                continue
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(tar.extractfile(member).read())
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ais.report.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a model.source (e.g. qwen2.5-coder-0.5b)")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="more params for the run (key=value)")
    parser.add_argument("--keep-only", action="store_true",
                        help="do not run: keep the reports of the newest experiment already run for this source")
    args = parser.parse_args(argv)
    name = "model-" + args.source.replace("/", "-").replace(".", "_")
    if args.keep_only:
        print(f"{args.source}: kept {keep_reports(experiment_ref(name), args.source)}")
        return 0
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
