"""The floors of a training step: bytes it must move, products it must compute, and the rates they meet."""
import math

import pytest

from hwutils.roofline import copy_bandwidth, floors, product_rate, step_bytes, step_flops


def test_a_step_moves_32_bytes_per_weight_28_in_the_first_layer_and_28_per_bias():
    # 3-4-2: the first layer's 12 weights are not read by an input-gradient product (28 bytes each),
    # the second layer's 8 are (32 bytes); every bias is read, its gradient written and read, its
    # momentum and itself read and written (28 bytes).
    assert step_bytes([3, 4, 2]) == 12 * 28 + 4 * 28 + 8 * 32 + 2 * 28 == 760
    assert step_bytes([3, 4, 2], members=5) == 5 * 760


def test_the_paper_shape_moves_about_124_MB_per_run_step():
    assert step_bytes([784, 1024, 1024, 2048, 10]) / 1e6 == pytest.approx(123.9, abs=0.05)


def test_a_steps_products_are_two_per_layer_plus_the_input_gradient_after_the_first():
    # batch 5: forward 2·5·3·4 and weight gradient 2·5·3·4 in layer 1; three products of 2·5·4·2 in layer 2
    assert step_flops([3, 4, 2], 5) == 2 * 120 + 3 * 80 == 480
    assert step_flops([3, 4, 2], 5, members=2) == 960


def test_the_floor_is_the_larger_of_memory_and_arithmetic_per_run():
    f = floors([3, 4, 2], 5, 4, bandwidth=760.0, flop_rate=240.0)   # 1 s of memory, 2 s of products per run
    assert f == {"memory": 1.0, "arithmetic": 2.0, "floor": 2.0}


def test_the_measured_rates_are_rates_of_this_machine():
    bandwidth = copy_bandwidth("cpu", megabytes=16, seconds=0.1)
    rate = product_rate([64, 32, 10], 16, 2, device="cpu", seconds=0.1)
    assert 1e8 < bandwidth < 1e13 and math.isfinite(bandwidth)      # bytes/s: from 0.1 GB/s to 10 TB/s
    assert 1e6 < rate < 1e15
