"""Verified computation's pieces without a network: the measure, the tolerance, the reputation file,
and the reports' wire format."""

from __future__ import annotations

import pytest
import torch

from corolla.client.verify import Reputation, Verdict, disagreement, tolerance
from corolla.protocol.messages import WrongComputationReport, reports_key
from corolla.swarm.discovery import parse_reports


def test_disagreement_is_the_worst_tokens_relative_error():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 64)
    assert disagreement(a, a.clone()) == 0.0
    assert disagreement(a, a * 1.01) == pytest.approx(0.01 / 1.01, rel=1e-3)  # off by 1 % everywhere
    flipped = a.clone()
    flipped[1, 3] = -flipped[1, 3]  # one token of one row with its sign flipped
    assert disagreement(a, flipped) == pytest.approx(2.0)
    noisy = a + 1e-5 * torch.randn_like(a)
    assert disagreement(a, noisy) < tolerance("float32", "float32")


def test_tolerance_follows_the_coarser_dtype_and_the_codec():
    fp32, bf16 = tolerance("float32", "float32"), tolerance("bfloat16", "bfloat16")
    assert fp32 < 0.01 / 1.01  # off by 1 % is caught between fp32 servers
    assert tolerance("float32", "bfloat16") == bf16 > fp32
    assert tolerance("float32", "float32", "bfloat16") > fp32
    assert bf16 < 1.0 < 2.0  # a sign flip is caught in any dtype
    assert tolerance("float32", "mystery") == pytest.approx(0.1)


def test_the_reputation_file_remembers_per_model(tmp_path):
    rep = Reputation(tmp_path / "reputation.json")
    assert rep.distrusted("m@0123456789abcdef") == set()
    verdict = Verdict(0, 6, "liar", "honest1", 0.0099, 0.002, 40, referee="honest2", wrong="liar")
    rep.record("m@0123456789abcdef", "liar", verdict)
    rep.record("m@0123456789abcdef", "liar", verdict)
    again = Reputation(tmp_path / "reputation.json")
    assert again.distrusted("m@0123456789abcdef") == {"liar"} and again.distrusted("other") == set()
    entry = again._read()["m@0123456789abcdef"]["liar"]
    assert entry["caught"] == 2 and entry["witnesses"] == ["honest1", "honest2"] and entry["blocks"] == [0, 6]
    (tmp_path / "reputation.json").write_text("not json")
    assert Reputation(tmp_path / "reputation.json").distrusted("m") == set()  # a broken file: nothing known


def test_reports_parse_by_reporter_and_drop_what_does_not():
    good = WrongComputationReport(accused=("QmLiar2",), reported_at=1.0).model_dump(mode="json")
    raw = {"QmReporter": good, "QmOther": {"accused": []}, "QmSe1f": {"accused": ["QmSe1f"], "reported_at": 1.0},
           7: good}
    assert parse_reports(raw) == {"QmReporter": {"QmLiar2"}, "QmSe1f": set()}
    assert parse_reports(None) == {}
    assert reports_key("m@0123456789abcdef") == "corolla.reports.m@0123456789abcdef"
