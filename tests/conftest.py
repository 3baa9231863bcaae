"""Shared fixtures: tiny randomly initialised Llama models built from a config (no downloads)."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(n_layers=6, hidden=32, dtype=torch.float32, seed=0, vocab=97):
    """A random Llama small enough to run in milliseconds; deterministic for a seed."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
        initializer_range=0.25,  # large enough that generations vary instead of echoing the last token
    )
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


FAMILIES = ("llama", "qwen2", "mistral", "qwen3")


def tiny_model(family="llama", n_layers=6, hidden=32, dtype=torch.float32, seed=0, vocab=97):
    """A random model of a supported family, built from a config like `tiny_llama` (Qwen2 with its
    attention biases, Qwen3 with its query/key norms, Mistral without a sliding window)."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if family == "llama":
        return tiny_llama(n_layers, hidden, dtype, seed, vocab)
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
                                 "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[family]
    torch.manual_seed(seed)
    extra = {"head_dim": hidden // 4} if family == "qwen3" else {}
    config = config_class(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                          eos_token_id=2, pad_token_id=0, tie_word_embeddings=True, initializer_range=0.25,
                          sliding_window=None, **extra)
    model = model_class(config).to(dtype).eval()
    if family == "qwen2":  # random biases: the key/value fill must apply them
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.25)
    model.generation_config.pad_token_id = 0
    return model


def identities(model, layers):
    """Layers whose attention and MLP write nothing: each returns its input unchanged, for every input."""
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def left_padded(rows, pad_id=0):
    """A left-padded batch {input_ids, attention_mask} from lists of token ids."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def tiny():
    return tiny_llama()


@pytest.fixture
def tiny64():
    """float64, so that cached and uncached paths agree to far below any argmax margin."""
    return tiny_llama(dtype=torch.float64)


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory):
    """The embedded SmolLM2 materialised once per test session (what `dvc repro model` writes)."""
    from ais.model.loading import materialise

    out = tmp_path_factory.mktemp("model") / "model"
    materialise("embedded", out)
    return out


@pytest.fixture(scope="session")
def embedded(embedded_dir):
    """(model, tokenizer) of the embedded SmolLM2, float32 on CPU."""
    from ais.model.loading import load_model

    return load_model(embedded_dir, dtype="float32", device="cpu")


def tiny_tokenizer():
    """A word-level tokenizer with a chat template, vocabulary < 97 (fits tiny_llama); no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += "the a is of what write sum summarize story code add two plus capital france paris number".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.padding_side = "left"
    return tok


def write_fake_bigbench(path, tasks: dict):
    """A tarball laid out like the bigbench sdist: {task: [inputs]} -> .../benchmark_tasks/<task>/task.json."""
    import io
    import json
    import tarfile

    from ais.routing.corpus import TASKS_PREFIX

    with tarfile.open(path, "w:gz") as tar:
        for task, inputs in tasks.items():
            data = json.dumps({"examples": [{"input": x, "target": "-"} for x in inputs]}).encode()
            info = tarfile.TarInfo(f"{TASKS_PREFIX}{task}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tiny_routed_decoder(model, tok, contexts, labels, plan="category", scores=False, k=1, mode="hard"):
    """A map whose entries are the contexts' own router embeddings (pivot 2), so each context routes
    to its label; category a skips layer 4, b layer 3 (hard). With `scores` the map also holds each
    entry's own layer scores (block influence), which the neighbours plan reads."""
    from ais.decoding.routed import RoutedDecoder
    from ais.model.prompts import encode_prompts
    from ais.routing.embedding import embed_and_score, router_embedding
    from ais.routing.budget import SkipSettings
    from ais.routing.topomap import TopoMap

    vectors = router_embedding(model, encode_prompts(tok, contexts, "cpu"), 2).double().numpy()
    prompt_scores = embed_and_score(model, tok, contexts, 2, progress=False)[1] if scores else None
    identity = {"model_type": model.config.model_type, "n_layers": 6, "hidden_size": 32, "vocab_size": 97,
                "pivot_layer": 2, "pooling": "last"}
    importance = np.array([[1, .9, .8, .5, .1, .7], [1, .9, .8, .2, .6, .7]])
    topo = TopoMap(vectors, np.array(labels), ["a", "b"], identity, importance=importance,
                   global_importance=np.array([1, .9, .8, .3, .4, .7]), prompt_scores=prompt_scores)
    return RoutedDecoder(model, topo, SkipSettings(mode=mode, plan=plan, fraction=1 / 6, alpha=0.6), k=k)
