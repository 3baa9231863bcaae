"""The `ais` command: try the built pipeline on your own prompt.

    ais info                                  what the built map contains
    ais route "Summarise this article: ..."   category, neighbours, skip plan
    ais generate "What is 2+2?" --mode lossless   (or full, hard, soft, dynamic)
    ais generate --file prompts.txt           one prompt per line, decoded as one batch
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

EPILOG = "Reads params.yaml and the outputs of `dvc repro` (data/model, data/map) in --root."


# The heavy imports (torch, transformers, FAISS) happen inside the commands, so that `ais --help`
# and argument errors answer at once.


def _read_prompts(args) -> list[str]:
    """The prompts: the arguments, or the lines of --file (UTF-8, one prompt a line, blank lines skipped)."""
    from ais.model.prompts import check_prompt

    if args.file:
        if args.prompt:
            raise ValueError("give prompts as arguments or with --file, not both")
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{args.file} is not valid UTF-8 text ({err})") from err
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{args.file} holds no prompt (every line is empty)")
        return prompts
    if not args.prompt:
        raise ValueError("give a prompt (or --file PATH with one prompt a line, - for standard input)")
    return [check_prompt(p) for p in args.prompt]


def _check_built(root: Path, model_too: bool = True) -> None:
    if not (root / "data/map/map.json").is_file() or (model_too and not (root / "data/model").is_dir()):
        raise FileNotFoundError(f"no built pipeline in {root.resolve()}: run `dvc repro` first")


def _load(args):
    from ais.api import load

    _check_built(Path(args.root))
    return load(root=args.root)


def cmd_info(args) -> dict:
    """The map's model, size and categories, and per category the layers its plan may skip
    (past the router's pivot, below `skip.critical`) and those it skips at the params' settings."""
    from ais.params import load_params
    from ais.routing.budget import SkipSettings, candidate_layers, select_layers
    from ais.routing.topomap import TopoMap

    root = Path(args.root)
    _check_built(root, model_too=False)
    topo = TopoMap.load(root / "data/map")
    settings = SkipSettings.from_params(load_params(root / "params.yaml"))
    counts = {c: int((topo.labels == i).sum()) for i, c in enumerate(topo.categories)}
    drafters = root / "data/drafters.json"
    info = {"model": topo.identity, "entries": len(topo), "categories": counts,
            "has_importance": topo.importance is not None, "has_learned_router": bool(topo.router),
            "drafters": json.loads(drafters.read_text()) if drafters.is_file() else None}
    if topo.importance is not None:
        pivot = int(topo.identity["pivot_layer"])
        info["skip"] = f"{settings.mode}, {settings.select} {settings.fraction if settings.select == 'fraction' else settings.threshold}"
        info["plans"] = {c: {"may_skip": candidate_layers(topo.importance[i], pivot, settings.critical),
                             "skips": select_layers(topo.importance[i], pivot, settings)}
                         for i, c in enumerate(topo.categories)}
    return info


def cmd_route(args):
    from ais.api import route

    prompts = _read_prompts(args)
    system = _load(args)
    out = [route(system, p) for p in prompts]
    return out[0] if len(out) == 1 else out


def cmd_generate(args):
    from ais.api import generate

    prompts = _read_prompts(args)
    results = generate(_load(args), prompts, args.mode, args.max_new_tokens, args.plan)
    out = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.__dict__.items()} for r in results]
    return out[0] if len(out) == 1 else out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ais", description="Adaptive layer skipping: route and generate with the built pipeline.",
                                epilog=EPILOG)
    p.add_argument("--root", default=".", help="repository root holding params.yaml and data/ (default: .)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what the built map contains", epilog=EPILOG).set_defaults(fn=cmd_info)
    for name, fn, text in (("route", cmd_route, "category, nearest map entries and skip plan of a prompt"),
                           ("generate", cmd_generate, "greedy reply under a skip mode")):
        s = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        s.add_argument("prompt", nargs="*", help="the prompt text (several: one batch)")
        s.add_argument("--file", help="read the prompts from a UTF-8 file, one a line (- for standard input)")
        if name == "generate":
            s.add_argument("--mode", default=None, choices=("full", "hard", "soft", "lossless", "dynamic"),
                           help="full: no skip; hard/soft: the routed plan; lossless: speculative, identical to "
                                "full; dynamic: per-token depth (default: skip.mode in params.yaml)")
            s.add_argument("--plan", default=None,
                           help="the method that chooses a hard or soft plan's layers: global, category, neighbours, "
                                "prompt, or any deployable method registered in ais.methods (default: skip.plan)")
            s.add_argument("--max-new-tokens", type=int, default=64)
        s.set_defaults(fn=fn)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        result = args.fn(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"ais: error: {err}", file=sys.stderr)
        return 2
    print(to_json(result))
    return 0


def to_json(obj) -> str:
    """Indented JSON with lists of plain values kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]",
                  lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]"
                  if "\n" in m.group(0) else m.group(0), text)


if __name__ == "__main__":
    sys.exit(main())
