"""Golden loss curve (tests/golden/loss_curve.txt): 20 DeepSpeed steps of the tiny Shakespeare run."""
import pytest

from proxy_exp.train.job import train
from tests.helpers import golden, loss_history, tiny_train_cfg

pytestmark = pytest.mark.golden


def test_short_loss_curve_never_drifts(tmp_path):
    r = train(tiny_train_cfg(tmp_path, experiment="golden", steps=20), progress=False)
    hist = loss_history(tmp_path, r.run_id)
    text = "".join(f"{s} {v:.6f}\n" for s, v in hist)
    expected = [line.split() for line in golden("loss_curve.txt", text).splitlines()]
    assert [s for s, _ in hist] == [int(s) for s, _ in expected] == list(range(1, 21))
    assert [v for _, v in hist] == pytest.approx([float(v) for _, v in expected], abs=2e-5)
