"""The demo report's verdicts (issue: newcomer): what was measured, beside what, works / does not yet."""

from genlab import report


def result(figures, targets):
    return {"figures": figures, "targets": targets}


def test_a_verdict_names_every_missed_target_with_its_value():
    met = {"a": {"goal": "≥ 1", "met": True}}
    missed = {**met, "keyword_coverage": {"goal": "≥ 0.8", "met": False}}
    assert report.verdict(result({"a": 2.0}, met)) == "works: every target met"
    assert report.verdict(result({"a": 2.0, "keyword_coverage": 0.08}, missed)) == \
        "does not yet: keyword_coverage 0.08 (goal ≥ 0.8)"
    derived = {"coverage_vs_ar": {"goal": "> 0", "met": False}}  # a target on a difference, not a figure
    assert report.verdict(result({}, derived)) == "does not yet: coverage_vs_ar (goal > 0)"
    assert report.verdict({"figures": {}}).startswith("no targets recorded")


def test_the_verdict_table_puts_quality_beside_speed_for_every_system():
    figures = {name: 0.5 for headline in report.HEADLINES.values() for name in headline if name}
    results = {system: result(figures, {}) for system in report.HEADLINES}
    lines = report.section_verdicts(results)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| system")]
    assert len(rows) == len(report.HEADLINES)
    planner = next(row for row in rows if row.startswith("| planner"))
    assert "keyword_coverage 0.5 (baseline 0.5)" in planner and "executor_decode_ratio 0.5" in planner
