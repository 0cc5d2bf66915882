"""Calibration on the user's data or a diverse offline default, and fidelity reported per held-out domain."""
from __future__ import annotations

import pyarrow as pa
import pytest

from mlabatch.models.conversion.calibration import (OFFLINE_DOMAINS, TABLE_DOMAIN, calibration_texts,
                                                    heldout_domains, heldout_texts)
from mlabatch.models.conversion.config import CalibrationConfig, ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import fidelity_report

CITIES = ["Köln", "Berlin", "München", "Hamburg", "Leipzig", "Dresden", "Bremen"]


def _german_table(path, n: int = 80) -> str:
    """A Delta table of German support tickets (column `body`), the kind of text a user embeds."""
    from deltalake import write_deltalake

    bodies = [f"Ticket {i}: Die Lieferung nach {CITIES[i % 7]} kam {i % 5 + 1} Tage zu spät, und die Rechnung "
              f"enthält {i % 3 + 2} Positionen, die wir nicht bestellt haben. Bitte prüfen Sie den Vorgang." for i in range(n)]
    write_deltalake(str(path), pa.table({"id": [str(i) for i in range(n)], "body": bodies}))
    return str(path)


def test_offline_default_mixes_prose_code_and_a_non_latin_script():
    texts = calibration_texts(CalibrationConfig(num_texts=30))
    assert any("def " in t for t in texts) and any("\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7a3"
                                                   for t in texts for ch in t)
    domains = heldout_domains(CalibrationConfig(), 8)
    assert list(domains) == list(OFFLINE_DOMAINS)
    held = {t for d in domains.values() for t in d}
    assert not held & set(calibration_texts(CalibrationConfig(num_texts=10_000)))
    assert set(heldout_texts(12)) <= held


def test_a_table_calibrates_and_is_one_more_held_out_domain(tmp_path):
    config = CalibrationConfig(num_texts=20, table=_german_table(tmp_path / "tickets"), column="body")
    texts = calibration_texts(config)
    assert len(texts) == 20 and all(t.startswith("Ticket ") for t in texts)
    held = heldout_domains(config, 8)[TABLE_DOMAIN]
    assert len(held) == 8 and not set(held) & set(texts)


def test_table_errors_name_the_fix(tmp_path):
    table = _german_table(tmp_path / "tickets")
    with pytest.raises(ConversionError, match=r"has no column 'text' \(columns: \['id', 'body'\]\)"):
        calibration_texts(CalibrationConfig(table=table))
    with pytest.raises(ConversionError, match="is not a Delta table"):
        calibration_texts(CalibrationConfig(table=str(tmp_path / "missing")))
    with pytest.raises(ConversionError, match="not both"):
        CalibrationConfig(table=table, texts_file=tmp_path / "x.txt")


def test_fidelity_is_reported_per_domain_including_the_users_table(minilm_dir, tmp_path):
    """MiniLM calibrated on German tickets: the report gives mean, p1 and min for each held-out domain."""
    calibration = CalibrationConfig(num_texts=24, max_tokens=128, table=_german_table(tmp_path / "tickets"),
                                    column="body")
    out = convert(minilm_dir, MLAConfig(d_c=192, method="pca", calibration=calibration), tmp_path / "mla")
    report = fidelity_report(minilm_dir, out, num_texts=8, max_tokens=128)
    assert set(report["domains"]) == {*OFFLINE_DOMAINS, TABLE_DOMAIN}
    for d in report["domains"].values():
        assert d["n_texts"] >= 4 and 0.5 < d["cosine_min"] <= d["cosine_p1"] <= d["cosine_mean"] < 1
    # the domain calibrated on is fitted best; the others are what a report on it alone would hide
    assert report["domains"][TABLE_DOMAIN]["cosine_mean"] > report["domains"]["code"]["cosine_mean"]
