"""[R] figure reproductions on small settings: files written, and the closed-form facts they must show."""

import json

import pytest

from lesion.experiments.crash_figures import depth_sweep, dropout_study, lipschitz_sweep, weight_scale_sweep


def test_relu_omega_grows_exactly_as_K_to_the_4(tmp_path):
    # bias-free ReLU(k·s) nets with 4 hidden layers are positively homogeneous: F(x; k) = k^4 F(x; 1)
    result = lipschitz_sweep(tmp_path, "relu", "r-fig3", Ks=(0.2, 1.0, 5.0), faults=(1, 2), nets=2, steps=4)
    assert result["log_log_slopes"] == {1: pytest.approx(4.0, abs=1e-6), 2: pytest.approx(4.0, abs=1e-6)}
    assert (tmp_path / "r-fig3.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "r-fig3.json").read_text())["inputs"] == 4**4


def test_sigmoid_saturates(tmp_path):
    result = lipschitz_sweep(tmp_path, "sigmoid", "r-fig4", Ks=(0.5, 2.0, 8.0), faults=(1,), nets=2, steps=4)
    assert result["log_log_slopes"][1] < 1.0


def test_relu_weight_scale_slope_is_the_number_of_weight_layers(tmp_path):
    result = weight_scale_sweep(tmp_path, scales=(0.5, 1.0, 2.0), nets=2, steps=4)
    assert result["log_log_slopes"]["relu"] == pytest.approx(5.0, abs=1e-6)


def test_depth_sweep_writes_its_figure(tmp_path):
    result = depth_sweep(tmp_path, Ks=(0.2, 5.0), nets=2, steps=4)
    assert len(result["rows"]) == 6 and (tmp_path / "r-fig5.png").exists()
    assert set(result["inversion"]) == {"deeper_is_smaller_below_1", "deeper_is_larger_above_1"}


def test_dropout_study_bounds_hold(tmp_path):
    result = dropout_study(tmp_path, dropouts=(0.0, 0.3), epochs=1, max_faults=3, certify_seconds=1.0)
    for net in result["networks"]:
        for row in (net["rows"][0], net["rows"][2]):  # the certified bracket holds the exact figures
            cert = row["softmax_certified"]
            assert cert["omega_max_lower"] <= row["softmax_omega_max"] * (1 + 1e-9) + 1e-12
            assert row["softmax_omega_max"] <= cert["omega_max_upper"] * (1 + 1e-9) + 1e-12
            assert cert["omega_mav_lower"] <= row["softmax_omega_mav"] * (1 + 1e-9) + 1e-12
            assert row["softmax_omega_mav"] <= cert["omega_mav_upper"] * (1 + 1e-9) + 1e-12
            assert cert["omega_max_upper"] <= row["softmax_erf"]
        for row in net["rows"]:
            assert row["erf"] >= row["omega_max"]  # Theorem 2, C measured on the same inputs
            assert row["erf_av"] > 0
        three = net["rows"][2]
        assert three["softmax_erf"] >= three["softmax_omega_av"]  # softmax is ½-Lipschitz in the ∞-norm
    assert (tmp_path / "r-fig7.png").exists()
