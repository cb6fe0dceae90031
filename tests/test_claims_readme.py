"""The README's results section shows the claims table of the committed smoke results, not a hand-typed copy."""
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "results" / "smoke" / "claims.csv"


@pytest.mark.skipif(not CLAIMS.exists(), reason="results/smoke/claims.csv not generated (make reproduce)")
def test_readme_shows_the_committed_claims_table():
    from urbancross.stats import claims_markdown
    claims = pd.read_csv(CLAIMS, keep_default_na=False, na_values=[""])
    table = claims_markdown(claims).strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README.md's claims table differs from claims_markdown(results/smoke/claims.csv); paste results/smoke/claims.md"


@pytest.mark.skipif(not CLAIMS.exists(), reason="results/smoke/claims.csv not generated (make reproduce)")
def test_every_claim_row_is_filled_with_an_interval_and_a_verdict():
    claims = pd.read_csv(CLAIMS)
    assert len(claims) == 6
    assert set(claims.verdict) <= {"reproduced", "contradicted", "inconclusive"}
    for col in ("delta", "ci_low", "ci_high", "rel_delta", "n_test_images", "n_seeds"):
        assert claims[col].notna().all(), col
    assert ((claims.ci_low <= claims.delta) & (claims.delta <= claims.ci_high)).all()
