"""Issue 14: a model folder that cannot be scored as it is ends proxy-score with one clear line (exit 2) that names
the folder, what is wrong and the fix; no traceback unless PROXY_EXP_TRACEBACK=1, and no unit that looks complete."""
import glob
import json
import os
import shutil

import pytest
import torch

from tests.helpers import FIXTURE_TRACE_OVERRIDES, FIXTURE_TRACES, run_cli

TOK_VOCAB = 300


def _llama(vocab: int, hidden: int = 32):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0, pad_token_id=1))


def _save(model, tok, folder: str) -> str:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _edit_config(folder: str, **changes) -> None:
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


class _RunsCode:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)



def _without_weights(src: str, dst: str) -> str:
    """A copy of the model folder ``src`` without its safetensors weights."""
    os.makedirs(dst)
    for name in os.listdir(src):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(src, name), dst)
    return dst

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders (2-layer, 32-dim Llama; a BPE tokenizer of 300 tokens), good and bad."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from proxy_exp.data.tokenizer import train_bpe

    base = tmp_path_factory.mktemp("models")
    with open(FIXTURE_TRACES) as f:
        tok = train_bpe([line for line in f], TOK_VOCAB)
    assert len(tok) == TOK_VOCAB
    out = {}
    # a padded embedding (more rows than tokens) is legitimate
    out["good"] = _save(_llama(TOK_VOCAB + 20), tok, str(base / "good"))
    out["no_weights"] = _without_weights(out["good"], str(base / "no_weights"))
    # config.json of another width than the weights: size mismatches
    out["other_width"] = str(base / "other_width")
    shutil.copytree(out["good"], out["other_width"])
    _edit_config(out["other_width"], hidden_size=64)
    # GPT-2 weights beside a Llama config.json: every key missing / unexpected
    out["other_arch"] = str(base / "other_arch")
    torch.manual_seed(0)
    _save(AutoModelForCausalLM.from_config(GPT2Config(vocab_size=TOK_VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                      n_positions=512)), tok, out["other_arch"])
    shutil.copy(os.path.join(out["good"], "config.json"), out["other_arch"])
    # a tokenizer of 300 tokens with a model of 280 embedding rows
    out["big_tokenizer"] = _save(_llama(TOK_VOCAB - 20), tok, str(base / "big_tokenizer"))
    # a pytorch_model.bin that is a pickle of more than tensors
    out["pickle"] = _without_weights(out["good"], str(base / "pickle"))
    out["pickle_marker"] = str(base / "pickle_ran")
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": _RunsCode(out["pickle_marker"])},
               os.path.join(out["pickle"], "pytorch_model.bin"))
    # custom code (auto_map) that must not run unless model.trust_remote_code=true
    out["remote_code"] = str(base / "remote_code")
    shutil.copytree(out["good"], out["remote_code"])
    out["remote_marker"] = str(base / "remote_ran")
    _edit_config(out["remote_code"], model_type="proxy_exp_custom",
                 auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                           "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    with open(os.path.join(out["remote_code"], "modeling_custom.py"), "w") as f:
        f.write(f"open({out['remote_marker']!r}, 'w').write('ran')\n"
                "from transformers import LlamaConfig, LlamaForCausalLM\n"
                "class CustomConfig(LlamaConfig):\n    model_type = 'proxy_exp_custom'\n"
                "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    return out


def _score(folder: str, root, ok: bool = False, env: dict | None = None):
    return run_cli("proxy-score", f"model.path={folder}", f"paths.root={root}", *FIXTURE_TRACE_OVERRIDES, ok=ok,
                   env=env)


def _assert_one_clear_line(r, root, folder: str, *words: str) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    line = errors[0]
    assert folder in line, line
    for word in words:
        assert word in line, (word, line)
    assert not glob.glob(f"{root}/units/*/DONE.json")  # nothing that looks complete
    return line


def test_good_model_with_padded_embedding_scores(folders, tmp_path):
    """A tokenizer smaller than the embedding (padding rows) is legitimate and scores."""
    _score(folders["good"], tmp_path, ok=True)
    assert glob.glob(f"{tmp_path}/units/*/DONE.json")


def test_folder_without_weights(folders, tmp_path):
    r = _score(folders["no_weights"], tmp_path)
    _assert_one_clear_line(r, tmp_path, folders["no_weights"], "model.path", "no weights", "*.safetensors",
                           "pytorch_model", "save_pretrained")


def test_weights_of_another_width_than_config(folders, tmp_path):
    r = _score(folders["other_width"], tmp_path)
    line = _assert_one_clear_line(r, tmp_path, folders["other_width"], "do not match the architecture",
                                  "config.json", "another shape", "use the config.json saved together")
    assert "[32, 32]" in line or "[300, 32]" in line or "[320, 32]" in line, line


def test_weights_of_another_architecture_than_config(folders, tmp_path):
    """GPT-2 weights under a Llama config.json: transformers alone would only warn and initialise them at random."""
    r = _score(folders["other_arch"], tmp_path)
    _assert_one_clear_line(r, tmp_path, folders["other_arch"], "do not match the architecture", "model_type=llama",
                           "missing", "use the config.json saved together")


def test_tokenizer_larger_than_embedding(folders, tmp_path):
    r = _score(folders["big_tokenizer"], tmp_path)
    _assert_one_clear_line(r, tmp_path, folders["big_tokenizer"], f"{TOK_VOCAB} tokens", f"{TOK_VOCAB - 20} rows",
                           "use the tokenizer the model was trained with")


def test_pickle_weights_are_refused(folders, tmp_path):
    """A .bin only folder loads through torch.load(weights_only=True): a pickle of an arbitrary object is refused."""
    r = _score(folders["pickle"], tmp_path)
    _assert_one_clear_line(r, tmp_path, folders["pickle"], "weights_only=True", "safetensors")
    assert not os.path.exists(folders["pickle_marker"])


def test_custom_code_is_not_run_by_default(folders, tmp_path):
    r = _score(folders["remote_code"], tmp_path)
    _assert_one_clear_line(r, tmp_path, folders["remote_code"], "custom code", "model.trust_remote_code=true")
    assert not os.path.exists(folders["remote_marker"])


def test_traceback_on_request(folders, tmp_path):
    r = _score(folders["big_tokenizer"], tmp_path, env={"PROXY_EXP_TRACEBACK": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "ModelFolderError" in r.stderr
    assert not glob.glob(f"{tmp_path}/units/*/DONE.json")


def test_eval_folder_without_weights(folders, tmp_path):
    """proxy-eval checks for weights too, before the run opens and before lm-eval loads anything."""
    r = run_cli("proxy-eval", f"model.path={folders['no_weights']}", f"paths.root={tmp_path}", ok=False)
    _assert_one_clear_line(r, tmp_path, folders["no_weights"], "model.path", "no weights", "*.safetensors")
