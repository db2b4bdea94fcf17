"""Done-ness without rereading outputs: status, plans and runs read completion markers and the outputs' sizes;
checksums are verified when a job reads its own unit and by ``proxy-campaign action=verify``."""
from __future__ import annotations

import os

import pytest

from proxy_exp import units
from tests.helpers import compose, flip_a_byte, run_cli


def _finish(root: str, uid: str, nbytes: int = 4096) -> str:
    d = units.unit_dir(root, uid)
    os.makedirs(os.path.join(d, "model"), exist_ok=True)
    out = os.path.join(d, "model", "weights.bin")
    with open(out, "wb") as f:
        f.write(os.urandom(nbytes))
    units.write_done(root, uid, {"ok": True})
    return out


def test_is_done_reads_sizes_only_and_verify_reads_everything(tmp_path, monkeypatch):
    root = str(tmp_path)
    weights = _finish(root, "train-a")
    flip_a_byte(weights)
    hashed = []
    real = units.file_sha256
    monkeypatch.setattr(units, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert units.is_done(root, "train-a") and hashed == []  # a same-size corruption is not seen, nothing is read
    assert units.is_done(root, "train-a")  # and nothing was moved
    problem = units.verify_done(root, "train-a")
    assert "weights.bin does not match its checksum" in problem and hashed
    assert not units.is_done(root, "train-a")  # moved aside: the unit reruns
    assert os.path.exists(os.path.join(units.unit_dir(root, "train-a"), f"{units.DONE}.invalid"))
    # a truncated output is caught by its size, without reading it
    weights = _finish(root, "train-b")
    with open(weights, "r+b") as f:
        f.truncate(100)
    hashed.clear()
    assert not units.is_done(root, "train-b") and hashed == []
    assert units.verify_done(root, "never-ran") == ""


def test_verify_action_finds_a_damaged_unit_that_status_counts_as_done(tmp_path):
    """Through the real command: status counts a unit done from its marker and sizes; action=verify checks every
    output's checksum (large files too), reports the damaged unit with exit 1, and status then shows it missing."""
    from launchers.plan import plan_campaign
    from launchers.app import to_job
    from proxy_exp.config import CampaignJobConfig

    args = [f"paths.root={tmp_path}", "tokenizer=olmo"]
    plan = plan_campaign(to_job(compose("campaign", args), CampaignJobConfig))
    train = [u for u in plan if u.kind == "train"][:2]
    big = units.HASH_CHECK_MAX_BYTES + 1  # larger than a job's own check hashes: verify still does
    damaged = _finish(str(tmp_path), train[0].id, nbytes=16)
    _finish(str(tmp_path), train[1].id)
    with open(damaged, "r+b") as f:  # sparse: grows to `big` bytes without writing them
        f.truncate(big)
    units.write_done(str(tmp_path), train[0].id, {"ok": True})
    flip_a_byte(damaged)
    status = run_cli("proxy-campaign", "action=status", *args).stdout
    assert status.count("done ") >= 2 and f"2 done" in status.splitlines()[-1]
    r = run_cli("proxy-campaign", "action=verify", *args, ok=False)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"damaged  {train[0].label}  {train[0].id}" in r.stdout and "1 of 2 done unit(s) intact" in r.stdout
    assert "1 done" in run_cli("proxy-campaign", "action=status", *args).stdout.splitlines()[-1]
    assert run_cli("proxy-campaign", "action=verify", *args).returncode == 0  # the rest is intact


@pytest.mark.parametrize("action", ["plan", "status"])
def test_plan_and_status_change_nothing_on_disk(tmp_path, action):
    """A damaged unit stays as it is under plan and status (only a run or verify moves its marker aside), and no
    cache, campaign folder or MLflow store appears (Hydra's own log of the command, under hydra/, is all)."""
    args = [f"paths.root={tmp_path}", "tokenizer=olmo"]
    from launchers.app import to_job
    from launchers.plan import plan_campaign
    from proxy_exp.config import CampaignJobConfig

    uid = [u for u in plan_campaign(to_job(compose("campaign", args), CampaignJobConfig)) if u.kind == "train"][0].id
    weights = _finish(str(tmp_path), uid)
    with open(weights, "r+b") as f:
        f.truncate(10)

    def snapshot():
        return sorted((os.path.relpath(os.path.join(d, n), tmp_path), os.stat(os.path.join(d, n)).st_mtime_ns)
                      for d, _, names in os.walk(tmp_path) for n in names
                      if not os.path.relpath(d, tmp_path).startswith("hydra"))

    before = snapshot()
    run_cli("proxy-campaign", f"action={action}", *args)
    assert snapshot() == before
