"""The PNG plots: nothing cut at the image edges."""

import matplotlib.image as mpimg
import numpy as np

from lesion.report.plots import Series, line_plot


def test_plot_labels_are_not_cut_at_the_edges(tmp_path):
    path = line_plot(tmp_path / "p.png", [Series("a", [1, 2, 3], [0.000123, 0.000251, 0.000412])],
                     "crashed units f", "error on the raw outputs (‖·‖∞), measured", "t", note="n")
    img = mpimg.imread(path)[..., :3]
    for edge in (img[:, :2], img[:, -2:], img[:2], img[-2:]):
        assert np.all(edge > 0.95), "something is drawn at the very edge of the image"
