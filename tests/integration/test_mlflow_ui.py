"""The MLflow UI, seen: a real ``proxy-mlflow-server`` over a finished mini campaign, opened in headless Chromium.

A person who opens the campaign's experiment in the browser must see the campaign's parent run and its named child
runs (``train <corpus> <size> s<seed>``, ``score ...``, ``evaluate ...``, ``analysis``), the loss curve of a
training run and the Pareto plot (``analysis/frontier.png`` among the parent run's artifacts). Screenshots of each
view are saved under the test's tmp dir and logged to MLflow as artifacts of the campaign's analysis run (``ui/``).

The browser is Debian's ``chromium`` driven by Playwright (the PyPI wheel carries its Node driver; no browser is
downloaded: ``executable_path=/usr/bin/chromium``). Playwright rather than Selenium: its locators wait for the React
app to render by themselves (no sleeps, no explicit waits per element), and it needs no second Debian package
(chromium-driver) whose version must match the browser's. Every request the page makes is checked to go to the
server itself: the UI works offline. Without Chromium or Playwright the test fails with the command that fixes it.

MLflow 3.17's UI opens an experiment on the GenAI or the "Model training" view by the browser's workflow switch (the
``workflowType`` URL parameter or the switch remembered in the browser), not by the experiment's
``mlflow.experimentKind`` tag, which proxy-exp still sets (checked here; earlier MLflow 3 releases open the view it
names): the test opens the experiment's page and turns its "Model training" switch, as a person does once per browser.
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import time
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import mlflow_server, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium on a machine with no network: without the background-networking flags its own connections (to
# Google's update, sync and field-trial hosts) are refused over and over.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIX = ("Fix: `bash install.sh test` (as root: Debian's chromium and the pinned playwright of pyproject.toml's test "
       "extra), or `apt-get install -y --no-install-recommends chromium && .venv/bin/python -m pip install "
       "playwright==1.65.2` (never `playwright install`: it downloads a browser)")
EXPERIMENT = "ui"
CORPORA = ("python_code", "shakespeare")
# The real campaign command on its smallest settings: 2 corpora x (proxy xs + target s), in process (the inline
# executor: no process per unit, ~35 s on 2 cores), 10 training steps.
CAMPAIGN = ["campaign=tiny", "~campaign.corpora.wikipedia", "executor=inline", "campaign.evaluate_proxies=false",
            "tokenizer.vocab_size=512", "tokenizer.sample_bytes_per_corpus=50000", "traces.per_task=2",
            "traces.tasks=[gsm8k,mbpp]", "evaluate.tasks=[arc_easy]", "evaluate.limit=4",
            "pretrain.max_tokens=20480", "pretrain.checkpoint_every=5", f"tracking.experiment={EXPERIMENT}",
            *[f"campaign.corpora.{c}.max_bytes=100000" for c in CORPORA]]
PARENT = "campaign tiny"
CHILDREN = sorted([f"train {c} xs s0" for c in CORPORA] + [f"train {c} s s0" for c in CORPORA]
                  + [f"score {c} xs s0" for c in CORPORA] + [f"evaluate {c} s s0" for c in CORPORA] + ["analysis"])
LOSS_RUN = "train python_code xs s0"
UI_TIMEOUT_MS = 30_000  # per element: the first page load compiles the app's JavaScript (~3-9 s here)


def png_size(path: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A real MLflow server (its own root) and a finished mini campaign logged to it; yields (uri, root)."""
    base = tmp_path_factory.mktemp("ui")
    with mlflow_server(base / "server") as uri:
        t0 = time.monotonic()
        run_cli("proxy-campaign", *CAMPAIGN, f"paths.root={base / 'runs'}", f"tracking.uri={uri}", timeout=600)
        print(f"campaign: {time.monotonic() - t0:.1f} s")
        yield uri, base


def test_experiment_opens_on_training_runs_kind(campaign):
    """proxy-exp tags its experiments as custom model development (the training-runs view in MLflow 3's UI)."""
    uri, _ = campaign
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development", (
        f"experiment {EXPERIMENT!r} has tags {exp.tags}: proxy_exp.tracking.ensure_experiment must tag it "
        "mlflow.experimentKind=custom_model_development")


def _launch(playwright):
    """Debian's Chromium under Playwright with a fresh profile, or a test failure that says how to install it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: Debian's chromium is not installed. {FIX}", pytrace=False)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        ctx = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000}, timeout=60_000)
    except Exception as e:  # noqa: BLE001 (Playwright's Error: the browser did not start)
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"{CHROMIUM} did not start under Playwright ({str(e).strip()[:1500]}). {FIX}", pytrace=False)
    return ctx, profile


def test_campaign_is_visible_in_the_mlflow_ui(campaign, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed in {sys.prefix}. {FIX}", pytrace=False)
    uri, _ = campaign
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_name = {r.info.run_name: r for r in runs}
    (parent,) = [r for r in runs if r.info.run_name == PARENT]
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == CHILDREN, f"the campaign's child runs in MLflow are {children}, expected {CHILDREN}"
    loss_steps = len(client.get_metric_history(by_name[LOSS_RUN].info.run_id, "train/loss"))
    assert loss_steps >= 5, f"{LOSS_RUN} holds {loss_steps} train/loss points"
    frontier = client.download_artifacts(parent.info.run_id, "analysis/frontier.png", str(tmp_path / "expected"))
    frontier_w, frontier_h = png_size(frontier)

    shots = tmp_path / "screenshots"
    shots.mkdir()
    server = urlsplit(uri).netloc
    elsewhere: list[str] = []  # requests to anything but the server: none (the UI must work offline)

    with sync_playwright() as p:
        ctx, profile = _launch(p)
        try:
            ctx.route(lambda url: urlsplit(url).scheme in ("http", "https", "ws", "wss")
                      and urlsplit(url).netloc != server,
                      lambda route: (elsewhere.append(route.request.url), route.abort()))
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            t0 = time.monotonic()

            # MLflow's feature tours ("Detect Issues in Your Traces ... Got it") put a modal popover over the page
            # when they appear, which swallows every click: dismiss one as a person does, whenever it shows up
            page.add_locator_handler(page.get_by_role("button", name="Got it", exact=True), lambda b: b.click())

            def fail(what: str, shot: str, e: Exception):
                page.screenshot(path=str(shots / f"FAILED-{shot}.png"), full_page=True)
                (shots / f"FAILED-{shot}.txt").write_text(page.inner_text("body"))
                pytest.fail(f"the MLflow UI at {page.url} {what} within {UI_TIMEOUT_MS / 1000:.0f} s "
                            f"({type(e).__name__}: {str(e).splitlines()[0]}); screenshot and page text: "
                            f"{shots}/FAILED-{shot}.*", pytrace=False)

            def see(locator, what: str, shot: str):
                """``locator`` becomes visible, or the test fails naming ``what`` with a screenshot and page text."""
                try:
                    locator.first.wait_for(state="visible")
                except Exception as e:  # noqa: BLE001 (Playwright's TimeoutError)
                    fail(f"does not show {what}", shot, e)

            def click(locator, what: str, shot: str):
                see(locator, what, shot)
                try:
                    locator.first.click()
                except Exception as e:  # noqa: BLE001
                    fail(f"does not let {what} be clicked", shot, e)

            # 1. the experiment's page; MLflow 3.17 opens it on its GenAI overview, whatever the experiment's kind:
            # the "Model training" switch (remembered by the browser) turns to the runs table with the parent run
            page.goto(f"{uri}/#/experiments/{exp.experiment_id}")
            click(page.get_by_role("button", name="Model training", exact=True),
                  'the "Model training" switch of the experiment page', "landing")
            see(page.get_by_role("link", name=PARENT, exact=True), f"the campaign's parent run {PARENT!r}", "runs")
            print(f"runs table after {time.monotonic() - t0:.1f} s")
            # its children are folded under it: unfold them as a person would (the button in the parent's name cell)
            cell = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name=PARENT, exact=True))
            click(cell.get_by_role("button"), f"the unfold button of {PARENT!r}", "unfold")
            for name in CHILDREN:
                see(page.get_by_role("link", name=name, exact=True), f"the child run {name!r} under {PARENT!r}",
                    "children")
            page.screenshot(path=str(shots / "1-runs.png"))

            # 2. a training run's loss curve: its page, "Model metrics", the train/loss chart with one line
            click(page.get_by_role("link", name=LOSS_RUN, exact=True), f"the link to {LOSS_RUN!r}", "children")
            click(page.get_by_text("Model metrics", exact=True), f"the Model metrics tab of {LOSS_RUN!r}", "run")
            page.get_by_placeholder("Search metric charts").fill("train/loss")
            card = page.locator('[data-testid="experiment-view-compare-runs-card"]').filter(
                has=page.locator('[title="train/loss"]'))
            see(card, f"a train/loss chart on the metrics tab of {LOSS_RUN!r}", "loss")
            see(card.locator(".js-plotly-plot .scatterlayer path.js-line"),
                f"the line of the train/loss chart of {LOSS_RUN!r}", "loss")
            points = card.first.locator(".js-plotly-plot .scatterlayer .points path.point")
            assert points.count() == loss_steps, (
                f"the train/loss chart of {LOSS_RUN!r} draws {points.count()} points, MLflow holds {loss_steps}")
            card.first.screenshot(path=str(shots / "2-loss.png"))
            page.screenshot(path=str(shots / "2-run-metrics.png"))

            # 3. the Pareto plot among the parent run's artifacts
            page.go_back()
            page.go_back()
            see(page.get_by_role("link", name=PARENT, exact=True), f"the runs table again, with {PARENT!r}", "back")
            click(page.get_by_role("link", name=PARENT, exact=True), f"the link to {PARENT!r}", "back")
            click(page.get_by_text("Artifacts", exact=True), f"the Artifacts tab of {PARENT!r}", "parent")
            if not page.get_by_text("frontier.png", exact=True).first.is_visible():  # the folder may start folded
                click(page.get_by_text("analysis", exact=True), f"the artifact folder analysis/ of {PARENT!r}",
                      "artifacts")
            click(page.get_by_text("frontier.png", exact=True),
                  f"analysis/frontier.png among the artifacts of {PARENT!r}", "artifacts")
            img = page.locator('img[alt="analysis/frontier.png"]')
            see(img, "the Pareto plot analysis/frontier.png as an image", "frontier")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.first.element_handle())
            shown = img.first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert tuple(shown) == (frontier_w, frontier_h), (
                f"the image shown as analysis/frontier.png is {shown[0]}x{shown[1]}, the logged PNG "
                f"{frontier_w}x{frontier_h}")
            page.screenshot(path=str(shots / "3-frontier.png"))
            print(f"UI checked in {time.monotonic() - t0:.1f} s")
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)

    assert not elsewhere, f"the MLflow UI asked for resources off the server (it must work offline): {elsewhere}"
    analysis_id = by_name["analysis"].info.run_id
    for shot in sorted(shots.glob("*.png")):
        client.log_artifact(analysis_id, str(shot), "ui")
    logged = sorted(a.path for a in client.list_artifacts(analysis_id, "ui"))
    assert logged == [f"ui/{s.name}" for s in sorted(shots.glob("*.png"))], logged
    print(f"screenshots: {shots} (logged to run {analysis_id}, artifacts ui/)")
