"""The README's results section shows the claims table of the committed smoke results, not a hand-typed copy; that
table has every claim for the 'authors' recipe, the others' rows where they ran, and the DA claim against both
readings of 'without DA'."""
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "results" / "smoke" / "claims.csv"
CLAIM_COUNT = 7                                   # nbs/27_claims.ipynb's CLAIMS: five module claims + the DA claim twice
RECIPES = {"authors", "authors-joint", "ours"}    # urbancross recipes; 'authors' is reported on every claim
WITHOUT_DA = {"source only": "zero-shot transfer", "plain fine-tuning": "paper: plain fine-tuning"}
needs_claims = pytest.mark.skipif(not CLAIMS.exists(), reason="results/smoke/claims.csv not generated (make reproduce)")


def read_claims() -> pd.DataFrame:
    claims = pd.read_csv(CLAIMS, keep_default_na=False, na_values=[""])
    assert "recipe" in claims.columns, f"{CLAIMS} has no recipe column: regenerate it with nbs/27_claims.ipynb"
    return claims


@needs_claims
def test_readme_shows_the_committed_claims_table():
    from urbancross.stats import claims_markdown
    table = claims_markdown(read_claims()).strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README.md's claims table differs from claims_markdown(results/smoke/claims.csv); paste results/smoke/claims.md"


@needs_claims
def test_every_claim_row_is_filled_with_an_interval_and_a_verdict():
    claims = read_claims()
    assert set(claims.recipe) <= RECIPES, set(claims.recipe) - RECIPES
    authors = claims[claims.recipe == "authors"]
    assert len(authors) == CLAIM_COUNT and authors.claim.is_unique
    assert set(claims.claim) == set(authors.claim) and not claims.duplicated(["claim", "recipe"]).any()
    assert set(claims.verdict) <= {"reproduced", "contradicted", "inconclusive"}, claims[["claim", "recipe", "verdict"]]
    for col in ("delta", "ci_low", "ci_high", "rel_delta", "n_test_images", "n_seeds"):
        assert claims[col].notna().all(), col
    assert ((claims.ci_low <= claims.delta) & (claims.delta <= claims.ci_high)).all()


@needs_claims
def test_the_da_claim_is_reported_against_both_readings_of_without_da():
    claims = read_claims()
    da = claims[(claims.recipe == "authors") & claims.claim.str.contains("w/o DA", regex=False)]
    reading = da.claim.str.extract(r"w/o DA \(([^)]*)\)$")[0]
    assert dict(zip(reading, da.baseline)) == WITHOUT_DA
    assert set(da.system) == {"paper: UrbanCross"}


@needs_claims
def test_the_claims_table_has_a_sidecar_with_the_data_fallbacks():
    side = json.loads(CLAIMS.with_suffix(".json").read_text(encoding="utf-8"))
    assert side["table"] == "claims.csv" and isinstance(side["fallbacks"], dict)
    assert all({"count", "first"} <= set(v) for v in side["fallbacks"].values())
