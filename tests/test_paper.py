"""The paper-vs-ours mapping (urbancross.paper): bad paper CSVs name file and line; the matcher follows PROTOCOLS."""
import dataclasses
import re

import pytest

from urbancross.core import Registry, paths
from urbancross.paper import method_switches, our_rows_for, protocol_for, read_paper_results
from urbancross.protocols import PROTOCOLS

HEADER = "table,table_caption,setting,dataset_or_source,target,method,baseline,metric,value,source_url"


def test_committed_paper_results_map_to_our_protocols():
    paper = read_paper_results(paths()["data"] / "paper_results.csv")
    cross = paper[paper.setting == "cross-domain"].iloc[0]
    assert our_rows_for("cross-domain", cross.method) == ("cross_domain", {"protocol": "paper: UrbanCross"})
    assert our_rows_for("cross-domain", cross.baseline) == ("cross_domain", {"protocol": "paper: w/o DA"})


@pytest.mark.parametrize("setting, line", [("cross domain", "line 3 ('cross domain')"), ("", "line 3 (nan)")])
def test_unknown_setting_names_file_and_line(tmp_path, setting, line):
    p = tmp_path / "paper.csv"
    p.write_text(f"{HEADER}\nt,c,ablation,Spain,,UrbanCross,,mR,1,u\nt,c,{setting},Spain,,UrbanCross,,mR,1,u\n")
    with pytest.raises(ValueError, match=re.escape(f"paper.csv: unknown setting at {line}")):
        read_paper_results(p)


def test_missing_column_names_file(tmp_path):
    p = tmp_path / "paper.csv"
    p.write_text(HEADER.replace(",metric", "") + "\nt,c,ablation,Spain,,UrbanCross,,1,u\n")
    with pytest.raises(ValueError, match=r"paper.csv: missing columns \['metric'\]"):
        read_paper_results(p)


def test_matcher_follows_a_renamed_protocol_and_refuses_an_ambiguous_registry():
    renamed, ambiguous = Registry("protocol"), Registry("protocol")
    for name, p in PROTOCOLS.items():
        renamed.register(name.replace("curriculum only", "sampler only"), p)
        ambiguous.register(name, p)
    ambiguous.register("paper: UrbanCross, again", PROTOCOLS["paper: UrbanCross"])
    assert our_rows_for("cross-domain", "w/o WACDF", renamed) == ("cross_domain", {"protocol": "paper: sampler only"})
    with pytest.raises(ValueError, match="'paper: UrbanCross', 'paper: UrbanCross, again'"):
        our_rows_for("cross-domain", "UrbanCross", ambiguous)
    # a switch the paper's methods never set (slice captions in the loss) does not make them ambiguous
    assert protocol_for(method_switches("UrbanCross")) == "paper: UrbanCross"
    extra = dataclasses.replace(PROTOCOLS["paper: w/o DA"], target_text_loss=True)
    more = Registry("protocol")
    more.update(PROTOCOLS)
    more.register("paper: w/o DA + slice captions in loss", extra)
    assert protocol_for(method_switches("w/o DA"), more) == "paper: w/o DA"
