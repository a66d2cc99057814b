"""Fixtures of scvi-tools' own test suite that the ported tests use, its rules for marked
tests (run on request only), and the tests that do not apply to attreg_sc, each with its
reason (docs/single_cell.md, "scvi-tools' own tests")."""

from __future__ import annotations

import pytest
import scvi

from attreg_sc._compat import SCVI_VERSION

#: scvi-tools marks: run only with scvi-tools' own command-line options (not offered here)
SCVI_MARKS = ("internet", "optional", "mlflow", "dataloader", "multigpu", "autotune", "jax",
              "private")

#: tests that do not apply to attreg_sc, and why (matched against the test's node id);
#: docs/single_cell.md lists the same
NOT_APPLICABLE: dict[str, str] = {
    "test_saving_and_loading": (
        "writes scvi-tools' pre-0.15 pickled format (attr.pkl, model_params.pt) and loads it: "
        "unpickling runs code, so attreg_sc reads its own checked format only"
    ),
    "test_scanvi_pre_logits_fix_load": (
        "loads a folder scvi-tools 1.0 wrote (a pickle; not shipped with the port): "
        "attreg_sc reads its own checked format only"
    ),
    "test_scvi_n_obs_error": (
        "expects BatchNorm's error on a minibatch of one cell; SCARE uses LayerNorm "
        "(BatchNorm couples the cells whose attributions are constrained), so it trains"
    ),
    "test_scvi_no_anndata": (
        "expects the error of scvi-tools' max_epochs heuristic on a data module without "
        "n_obs; SCARE.train's max_epochs defaults to 100 (scARE's)"
    ),
    "test_scvi[": (
        "asserts a ZINB 'dropout' parameter of a model built with the default likelihood: "
        "scvi-tools' default is ZINB, SCARE's is NB (scARE's; gene_likelihood='zinb' is "
        "there); on scvi-tools 1.4 it fails for scvi-tools' SCVI too (view_registry)"
    ),
    "test_scvi_normal_likelihood": (
        "trains on non-integer values; SCARE refuses them unless "
        "setup_anndata(allow_non_integer=True) says they are meant"
    ),
}

#: tests of features newer than an installed scvi-tools: they fail for scvi-tools' own
#: classes on that version too (ATTREG_SCVI_PORT_CONTROL=1), so they run from the version on
NEEDS_SCVI: dict[str, tuple[tuple[int, int], str]] = {
    "test_scvi_query_to_reference": ((1, 5), "query-to-reference mapping of 1.5"),
}


def pytest_configure(config):
    for mark in SCVI_MARKS:
        config.addinivalue_line("markers", f"{mark}: scvi-tools' own test mark")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "scvi_tools_port" not in str(item.fspath):
            continue
        for mark in SCVI_MARKS:
            if mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"scvi-tools runs '{mark}' on request"))
        for pattern, reason in NOT_APPLICABLE.items():
            if pattern in item.nodeid:
                item.add_marker(pytest.mark.skip(reason=f"does not apply: {reason}"))
        for pattern, (version, reason) in NEEDS_SCVI.items():
            if pattern in item.nodeid and SCVI_VERSION < version:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs scvi-tools {version[0]}.{version[1]} ({reason}); fails for "
                           f"scvi-tools' own classes on {scvi.__version__}"))


@pytest.fixture(scope="session")
def save_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("temp_data", numbered=False)) + "/"


@pytest.fixture(autouse=True)
def set_seed(request):
    from scvi import settings

    settings.seed = 0
