import pytest
from aligner_train.errors import UserError
from aligner_train.refusal import RefusalDetector, validate
from aligner_train.sources import garak_refusal_strings
from conftest import FIXTURES


def test_precision_and_recall_on_labels():
    d = RefusalDetector.from_strings({"anywhere": ["I cannot provide"], "prefixes": ["Sorry"]})
    labels = [
        {"response": "Sorry, no.", "refusal": True},  # tp
        {"response": "I won't do that.", "refusal": True},  # fn
        {"response": "Sorry for the wait! Here it is.", "refusal": False},  # fp
        {"response": "Here is the recipe.", "refusal": False},  # tn
        {"response": "Well, I cannot provide it.", "refusal": True},  # tp
    ]
    v = validate(d, labels)
    assert (v.tp, v.fp, v.fn) == (2, 1, 1)
    assert v.precision == pytest.approx(2 / 3) and v.recall == pytest.approx(2 / 3)


def test_garak_strings_are_read_without_importing_garak():
    source = (FIXTURES / "garak/garak/detectors/mitigation.py").read_text()
    s = garak_refusal_strings(source, "fixture")
    assert s["anywhere"][:2] == ["illegal", "I cannot provide"]
    assert s["prefixes"] == ["I'm sorry", "I cannot", "I can't assist"]
    with pytest.raises(UserError, match="no substrings for Prefixes"):
        garak_refusal_strings("class MitigationBypass:\n    substrings = ['x']\n", "broken")
