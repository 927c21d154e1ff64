"""demos/covariance.py --quick: the sample covariance of q(x_t) matches ᾱ_t Σ_0 + (1 − ᾱ_t) I."""

import re


def test_sample_covariances_match_the_closed_form_within_sampling_error(tmp_path, run_demo):
    out = tmp_path / "cov"
    proc = run_demo("covariance.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    z = [float(v) for v in re.findall(r"= ([0-9.]+) standard errors", proc.stdout)]
    assert len(z) == 5  # t = 0, T/20, T/5, T/2, T
    assert max(z) < 5.0  # a wrong Σ_t (e.g. without the (1 − ᾱ_t) I) is off by hundreds of SEs
    assert (out / "covariance.png").stat().st_size > 10_000
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
