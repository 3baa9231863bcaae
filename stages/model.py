"""Stage `model`: materialise the model source once as a transformers checkpoint in data/model/."""
import time
from pathlib import Path

from ais.device import cpu_has_native_bfloat16, pick_device, pick_dtype
from ais.files import write_json
from ais.model.loading import load_model, materialise
from ais.params import get, load_params

OUT = Path("data/model")

if __name__ == "__main__":
    params = load_params()
    card, source_s = materialise(get(params, "model.source"), OUT)
    started = time.perf_counter()
    load_model(OUT, dtype="float32", device="cpu")
    checkpoint_s = time.perf_counter() - started
    print(f"model: {card['model_type']}, {card['n_layers']} layers, hidden {card['hidden_size']}; "
          f"load {source_s:.1f} s from source, {checkpoint_s:.1f} s from {OUT}")
    write_json("reports/model.json", {
        "n_layers": card["n_layers"], "hidden_size": card["hidden_size"],
        "load_seconds_from_source": round(source_s, 2), "load_seconds_from_checkpoint": round(checkpoint_s, 2),
        "dtype": str(pick_dtype(get(params, "model.dtype"), pick_device(get(params, "model.device")))).removeprefix("torch."),
        "cpu_native_bfloat16": cpu_has_native_bfloat16(),
    })
