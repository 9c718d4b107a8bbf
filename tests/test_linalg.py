"""inferkit.linalg.slogdet: equal to the eigenvalue log-determinant, batched, on any thread count."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit.linalg import slogdet


def eigen_log_abs_det(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvals(matrix).abs().log().sum()


def test_batched_cpu_slogdet_is_right_after_set_num_threads():
    # pytorch/pytorch#142815: the batched LU goes wrong once set_num_threads was called (n >~ 150).
    torch.set_num_threads(torch.get_num_threads())
    matrices = torch.randn(3, 200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sign, log_abs = slogdet(matrices)
    expected = torch.stack([eigen_log_abs_det(m) for m in matrices])
    torch.testing.assert_close(log_abs, expected, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(sign, torch.stack([torch.linalg.slogdet(m)[0] for m in matrices]))


@settings(max_examples=25, deadline=None)
@given(batch_shape=st.lists(st.integers(0, 3), max_size=2), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_slogdet_matches_torch_on_any_batch_shape(batch_shape, n, seed):
    matrices = torch.randn(*batch_shape, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    sign, log_abs = slogdet(matrices)
    expected_sign, expected_log = torch.linalg.slogdet(matrices)
    assert sign.shape == log_abs.shape == tuple(batch_shape)
    torch.testing.assert_close(sign, expected_sign)
    torch.testing.assert_close(log_abs, expected_log)
