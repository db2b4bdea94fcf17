"""proxy-train: pretrain one proxy model on one corpus (DeepSpeed)."""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from launchers.app import CONF_DIR, run_app, to_job
from proxy_exp.config import TrainJobConfig


def _main(cfg: DictConfig) -> float:
    job = to_job(cfg, TrainJobConfig)
    from proxy_exp.train.job import default_unit_id, train
    from proxy_exp.train.plan import plan_training

    if job.dry_run:
        from proxy_exp.data.tokenizer import planned_vocab_size

        plan = plan_training(job, planned_vocab_size(job.tokenizer)[0])
        print(json.dumps({"unit": default_unit_id(job), "corpus": job.corpus.name, "model": job.model.name,
                          **plan.__dict__}, indent=2))
        return 0.0
    r = train(job)
    print(f"train {r.unit_id}: final loss {r.final_loss:.4f}, {r.tokens:,} tokens in {r.steps} steps, "
          f"{r.flops:.3g} FLOPs, {r.seconds:.1f} s -> {r.model_dir}")
    return r.final_loss


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    return run_app(_main, cfg)


if __name__ == "__main__":
    main()
